//! The fan-out queue's order, bounds and repairs, against a memory broker's history.

use super::*;
use crate::broker::MemoryBroker;
use crate::config::HistoryRule;
use crate::hub::{Hub, Mode, Outbound, OutboundQueue, Subscriber};
use crate::mailbox::Admission;
use crate::metrics::Metrics;
use std::time::Duration;
use tether_core::channel::ChannelPattern;

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}

struct Setup {
    hub: Arc<Hub>,
    broker: MemoryBroker,
    fanout: Arc<Fanout>,
}

/// A hub, the broker as another node sees it (history on `h`; its own deliveries go
/// elsewhere), and a fan-out queue between them.
fn setup() -> Setup {
    let metrics = Arc::new(Metrics::new());
    let history =
        HistoryRule { pattern: ChannelPattern::new("h"), size: 100, ttl: Duration::from_secs(60) };
    let elsewhere = Arc::new(Hub::new(Arc::default()));
    let broker = MemoryBroker::new(elsewhere, vec![history.into()], 10);
    Setup { hub: Arc::new(Hub::new(metrics.clone())), broker, fanout: Fanout::new(&metrics) }
}

/// A subscriber of `channel` on `hub`, subscribed before the channel's first publication.
fn subscriber(hub: &Hub, conn: u64, channel: &str) -> Arc<OutboundQueue> {
    let queue = Arc::new(OutboundQueue::new(1024, 1 << 20));
    queue.with_subscriptions(|s| s.insert(Arc::from(channel)));
    queue.with_subscriptions(|s| s.get_mut(channel).unwrap().epoch = Some(Arc::from("")));
    hub.subscribe(channel, conn, Subscriber::new(queue.clone(), Mode::Json)).unwrap();
    queue
}

/// What the subscriber's connection would send: offsets, then `Err` at a gap.
fn sent(queue: &OutboundQueue) -> Result<Vec<u64>, Vec<u64>> {
    let mut offsets = Vec::new();
    while let Some(item) = queue.pop() {
        let Outbound::Publication(p) = item else { continue };
        match queue.admit(&p) {
            Admission::Send => offsets.push(p.offset),
            Admission::Skip => {}
            Admission::Gap => return Err(offsets),
        }
    }
    Ok(offsets)
}

#[tokio::test]
async fn what_a_full_queue_drops_is_replayed_from_history_in_order_or_told() {
    let Setup { hub, broker, fanout } = setup();
    let (h, n) = (subscriber(&hub, 1, "h"), subscriber(&hub, 2, "n"));
    let mut epochs = Vec::new();
    for channel in ["h", "h", "h", "n", "n"] {
        epochs.push(broker.publish(channel, &raw("1"), None).await.unwrap());
    }
    let incoming = |channel: &str, i: usize| incoming_on(channel, &epochs[i]);
    // h:1 and n:1 are queued; the queue fills; h:2, h:3 and n:2 are dropped.
    fanout.push(incoming("h", 0));
    fanout.push(incoming("n", 3));
    for _ in 2..MAX_QUEUED {
        fanout.push(Incoming { channel: Arc::from("elsewhere"), ..incoming("h", 0) });
    }
    for (channel, i) in [("h", 1), ("h", 2), ("n", 4)] {
        fanout.push(incoming(channel, i));
    }
    assert_eq!(fanout.dropped.get(), 3);
    while let Some(job) = fanout.try_next() {
        fanout.handle(job, &broker, &*hub).await;
    }
    // h: h:1 from the queue, then h:2 and h:3 replayed from history.
    assert_eq!(sent(&h), Ok(vec![1, 2, 3]));
    // n has no history: its subscriber gets what was queued, then is told of n:2.
    assert_eq!(sent(&n), Err(vec![1]));
    let repairs = |outcome| fanout.repairs.get_or_create(&OutcomeLabels { outcome }).get();
    assert_eq!((repairs("replayed"), repairs("told")), (1, 1));
}

/// A later drop (of another channel) must not move the repair past a marked channel's
/// newer publications: h:3, queued after h:2 was dropped, would meet h's subscriber before
/// h:2's replay — a gap.
#[tokio::test]
async fn a_later_drop_does_not_let_a_marked_channels_publications_overtake_its_repair() {
    let Setup { hub, broker, fanout } = setup();
    let h = subscriber(&hub, 1, "h");
    let receipts = publish_h(&broker, 3).await;
    let incoming = |channel: &str, i: usize| incoming_on(channel, &receipts[i]);
    fanout.push(incoming("h", 0));
    for _ in 1..MAX_QUEUED {
        fanout.push(Incoming { channel: Arc::from("elsewhere"), ..incoming("h", 0) });
    }
    fanout.push(incoming("h", 1)); // dropped: h marked
    let first = fanout.try_next().unwrap(); // h:1 delivered; a slot frees
    fanout.handle(first, &broker, &*hub).await;
    fanout.push(incoming("h", 2)); // queued behind the mark
    fanout.push(Incoming { channel: Arc::from("x"), ..incoming("h", 0) }); // dropped
    while let Some(job) = fanout.try_next() {
        fanout.handle(job, &broker, &*hub).await;
    }
    assert_eq!(sent(&h), Ok(vec![1, 2, 3]));
}

/// `n` publications on `h` through the broker (the other node); their receipts.
async fn publish_h(broker: &MemoryBroker, n: usize) -> Vec<crate::broker::PublishReceipt> {
    let mut receipts = Vec::new();
    for _ in 0..n {
        receipts.push(broker.publish("h", &raw("1"), None).await.unwrap());
    }
    receipts
}

/// The publication of `receipt` on `channel` as the link brings it.
fn incoming_on(channel: &str, receipt: &crate::broker::PublishReceipt) -> Incoming {
    Incoming {
        channel: Arc::from(channel),
        epoch: receipt.epoch.clone(),
        offset: receipt.offset,
        data: raw("1"),
    }
}

/// Every job the queue has now, handled in order.
async fn drain(Setup { hub, broker, fanout }: &Setup) {
    while let Some(job) = fanout.try_next() {
        fanout.handle(job, broker, &**hub).await;
    }
}

/// After a lost link, the new link's publications arrive while the node is still
/// subscribing everything again: they wait for the repair instead of overtaking the replay
/// of what was missed meanwhile (h:3 before h:2 would be a gap).
#[tokio::test]
async fn a_new_links_publications_wait_for_the_repair_of_what_the_old_one_missed() {
    let setup = setup();
    let Setup { hub, broker, fanout } = &setup;
    let h = subscriber(hub, 1, "h");
    let receipts = publish_h(broker, 3).await;
    let incoming = |i: usize| incoming_on("h", &receipts[i]);
    fanout.push(incoming(0));
    fanout.hold(); // the link is lost; h:2 is never received
    fanout.push(incoming(2)); // the new link's first publication
    drain(&setup).await;
    fanout.relinked(); // everything subscribed again
    drain(&setup).await;
    assert_eq!(sent(&h), Ok(vec![1, 2, 3]));
}

/// A slot moved: the cluster takes one channel's subscription away and it is made again on
/// the new master. What the new subscription brings before the node has asked for the repair
/// waits aside (h:3 before h:2's replay would be a gap); other channels go on meanwhile.
#[tokio::test]
async fn a_moved_channels_new_publications_wait_aside_for_its_repair_and_others_go_on() {
    let setup = setup();
    let Setup { hub, broker, fanout } = &setup;
    let (h, other) = (subscriber(hub, 1, "h"), subscriber(hub, 2, "n"));
    let mut receipts = Vec::new();
    for _ in 0..3 {
        receipts.push(broker.publish("h", &raw("1"), None).await.unwrap());
    }
    let n = broker.publish("n", &raw("1"), None).await.unwrap();
    let incoming = |i: usize| Incoming {
        channel: Arc::from("h"),
        epoch: receipts[i].epoch.clone(),
        offset: receipts[i].offset,
        data: raw("1"),
    };
    fanout.push(incoming(0));
    fanout.pause(&Arc::from("h")); // h's slot moved; h:2 went to the new master unheard
    fanout.push(incoming(2)); // the subscription made again brings h:3
    fanout.push(Incoming { channel: Arc::from("n"), epoch: n.epoch, offset: 1, data: raw("1") });
    drain(&setup).await;
    assert_eq!((sent(&h), sent(&other)), (Ok(vec![1]), Ok(vec![1])), "n is not held up");
    fanout.resubscribed(&Arc::from("h"));
    drain(&setup).await;
    assert_eq!(sent(&h), Ok(vec![2, 3]), "the replay, then what waited aside");
    assert_eq!(fanout.queued.get(), 0);
}

/// A pause whose repair is never asked for (the subscription could not be made again) ends
/// after `PAUSE_LIMIT` with a repair of its own: nothing waits aside for ever.
#[tokio::test(start_paused = true)]
async fn a_pause_never_followed_by_a_resubscription_ends_with_a_repair() {
    let setup = setup();
    let Setup { hub, broker, fanout } = &setup;
    let h = subscriber(hub, 1, "h");
    let receipts = publish_h(broker, 2).await;
    fanout.pause(&Arc::from("h"));
    fanout.push(incoming_on("h", &receipts[1]));
    assert!(fanout.try_next().is_none(), "h:2 waits aside");
    tokio::time::advance(PAUSE_LIMIT).await;
    drain(&setup).await;
    assert_eq!(sent(&h), Ok(vec![1, 2]), "repaired from the start, then h:2 passed by");
}

/// A repair asked for before the channel's subscription was taken away (a drop's) reads
/// history before the new subscription exists: it must not release the pause, or what the
/// new subscription brings would overtake the replay of what came between (h:5 before h:4).
#[tokio::test]
async fn only_a_repair_asked_for_after_the_resubscription_releases_a_paused_channel() {
    let setup = setup();
    let Setup { hub, broker, fanout } = &setup;
    let h = subscriber(hub, 1, "h");
    let mut receipts = publish_h(broker, 3).await;
    fanout.push(incoming_on("h", &receipts[0]));
    fanout.resubscribed(&Arc::from("h")); // a repair asked for earlier (say, a drop's)
    fanout.pause(&Arc::from("h")); // then the slot moves
    drain(&setup).await; // h:1, then the early repair: h:2, h:3
    receipts.extend(publish_h(broker, 2).await);
    fanout.push(incoming_on("h", &receipts[4])); // h:5 from the new subscription; h:4 went unheard
    drain(&setup).await;
    assert_eq!(sent(&h), Ok(vec![1, 2, 3]), "h:5 still waits aside");
    fanout.resubscribed(&Arc::from("h"));
    drain(&setup).await;
    assert_eq!(sent(&h), Ok(vec![4, 5]));
}
