//! Server-rendered SVG line charts for the dashboard: pure functions from samples to markup, so
//! the browser needs no chart library and the server no pixel code. Styling lives in the
//! dashboard's CSS (class names), so charts follow its theme.

use std::fmt::Write;

/// One line on a chart.
pub struct Series<'a> {
    pub name: &'a str,
    /// CSS class of the line (`s1`, `s2`, … in dashboard.css).
    pub class: &'a str,
    /// One value per sample; `None` is a gap.
    pub values: &'a [Option<f64>],
}

const W: f64 = 480.0;
const H: f64 = 150.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;

/// A "nice" upper bound for the y axis (1, 2, 2.5 or 5 × 10^n) at or above `max`.
pub fn nice_ceiling(max: f64) -> f64 {
    if !max.is_finite() || max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= max {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Render series sampled every `step_secs` (the last sample is "now") as an SVG line chart.
/// `format` turns a y value into an axis label.
pub fn line_chart(series: &[Series], step_secs: f64, format: &dyn Fn(f64) -> String) -> String {
    let samples = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let max = series.iter().flat_map(|s| s.values.iter().flatten()).fold(0.0f64, |m, v| m.max(*v));
    let top = nice_ceiling(max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x = |i: usize| {
        LEFT + if samples > 1 { plot_w * i as f64 / (samples - 1) as f64 } else { plot_w }
    };
    let y = |v: f64| TOP + plot_h * (1.0 - (v / top).clamp(0.0, 1.0));

    let mut svg = String::with_capacity(4096);
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" class="chart" role="img">"#
    );
    // Grid and y labels at 0, ½ and the top.
    for frac in [0.0, 0.5, 1.0] {
        let gy = y(top * frac);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{gy:.1}" y2="{gy:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - RIGHT,
            LEFT - 6.0,
            gy + 4.0,
            escape(&format(top * frac))
        );
    }
    // X labels: the window's start and "now".
    let span = step_secs * samples.saturating_sub(1) as f64;
    let start_label = if span >= 120.0 {
        format!("−{:.0} min", span / 60.0)
    } else {
        format!("−{span:.0} s")
    };
    let _ = write!(
        svg,
        r#"<text class="axis" x="{LEFT}" y="{}">{start_label}</text><text class="axis" x="{}" y="{}" text-anchor="end">now</text>"#,
        H - 6.0,
        W - RIGHT,
        H - 6.0
    );
    for s in series {
        // Split into runs of present values; each run is one polyline (gaps stay gaps).
        let mut run: Vec<(f64, f64)> = Vec::new();
        let flush = |run: &mut Vec<(f64, f64)>, svg: &mut String| {
            if run.len() == 1 {
                let (px, py) = run[0];
                let _ =
                    write!(svg, r#"<circle class="{}" cx="{px:.1}" cy="{py:.1}" r="2"/>"#, s.class);
            } else if run.len() > 1 {
                let points: Vec<String> =
                    run.iter().map(|(px, py)| format!("{px:.1},{py:.1}")).collect();
                let base = y(0.0);
                let _ = write!(
                    svg,
                    r#"<polygon class="area {}" points="{:.1},{base:.1} {} {:.1},{base:.1}"/><polyline class="line {}" points="{}"/>"#,
                    s.class,
                    run[0].0,
                    points.join(" "),
                    run[run.len() - 1].0,
                    s.class,
                    points.join(" ")
                );
            }
            run.clear();
        };
        for (i, v) in s.values.iter().enumerate() {
            match v {
                Some(v) => run.push((x(i), y(*v))),
                None => flush(&mut run, &mut svg),
            }
        }
        flush(&mut run, &mut svg);
        let _ = write!(svg, "<title>{}</title>", escape(s.name));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(21.0), 25.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(nice_ceiling(101.0), 200.0);
        assert_eq!(nice_ceiling(0.003), 0.005);
    }

    #[test]
    fn renders_lines_gaps_and_labels() {
        let a = [Some(1.0), Some(2.0), None, Some(4.0)];
        let svg = line_chart(&[Series { name: "conns", class: "s1", values: &a }], 1.0, &|v| {
            format!("{v:.0}")
        });
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1, "the run before the gap");
        assert_eq!(svg.matches("<circle").count(), 1, "the lone point after it");
        assert!(svg.contains(">5<"), "y axis tops at the nice ceiling: {svg}");
        assert!(svg.contains("−3 s") && svg.contains("now"));
    }

    #[test]
    fn escapes_text() {
        let svg = line_chart(&[Series { name: "<b>", class: "s1", values: &[] }], 1.0, &|v| {
            format!("{v}")
        });
        assert!(svg.contains("&lt;b&gt;"));
    }
}
