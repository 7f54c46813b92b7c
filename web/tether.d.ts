// Type declarations for tether.js.

export declare const SUBPROTOCOL: 'tether.v1.json';

export interface TetherOptions {
  /** 'json' speaks tether.v1.json; 'raw' is a plain WebSocket (text "ping" → "pong"). Default 'json'. */
  protocol?: 'json' | 'raw';
  /**
   * Heartbeat cadence, ms. Default 25000. 0 turns the heartbeat off: no pings are sent and
   * silence never closes the connection (a dead server is then noticed only when TCP says so).
   */
  pingInterval?: number;
  /** Silence tolerated after pingInterval before the server counts as dead, ms. Default 10000. */
  pongTimeout?: number;
  /** Backoff: first window (ms, default 1000), cap (ms, default 30000), growth (default 2). */
  backoffInitial?: number;
  backoffMax?: number;
  backoffFactor?: number;
  /** A connection up this long resets the backoff, ms. Default 5000. */
  minUptime?: number;
  /** Consecutive failed attempts before giving up. Default Infinity; 0 never reconnects. */
  maxAttempts?: number;
  /**
   * Sends (and publish commands) waiting to go out: while disconnected, and while the socket is
   * over `maxBufferedAmount`. One more rejects. Default 1000.
   */
  offlineQueue?: number;
  /**
   * Payload bytes of that queue (see `messageSize`); a send that would go beyond rejects, as
   * does one larger than this on its own when it has to wait. Default 4 MiB (4194304).
   */
  offlineQueueBytes?: number;
  /**
   * Unsent bytes the socket may hold (its `bufferedAmount`) before `send()` and `publish()` wait
   * in the queue instead of handing more to it; they go out in order as it drains, and their
   * promises resolve then, so awaiting each one keeps pace with the network. A full queue
   * rejects with "send queue full". Heartbeats and subscribes do not wait. Default 1 MiB
   * (1048576); Infinity hands everything to the socket at once; 0 waits until it is empty.
   */
  maxBufferedAmount?: number;
  /** Raw mode's heartbeat: the text sent as a ping, and the text that answers it. */
  rawPing?: string;
  rawPong?: string;
  /**
   * On `pagehide`, stop as `close()` does (promises settle, `stopped` says 'the page was hidden'):
   * a page that leaves lets the browser close with 1001; a page going into the back/forward
   * cache closes with 1000 and, if it was running, reconnects once on `pageshow`. Default true.
   */
  closeOnPageHide?: boolean;
  /** Connect in the constructor. Default true. */
  autoConnect?: boolean;
  /** A JWT sent with `connect` first on every connection (JSON mode). Default null. */
  token?: string | null;
  /**
   * Called after a 4002 (token expired) for a fresh token, within 10 s; no socket opens until
   * it settles (not even for a `connect()` meanwhile), and a failure stops the client. Default null.
   */
  getToken?: (() => string | Promise<string>) | null;
  /**
   * A WebSocket implementation where there is no global one (e.g. the `ws` package in Node). It
   * is called as `new WebSocket(url)` or `new WebSocket(url, [protocol])`; to give it options
   * of its own, pass a subclass that adds them.
   */
  WebSocket?: unknown;
  /**
   * JSON mode: the transports to try, in order. Default ['websocket', 'http_stream', 'sse']:
   * sessions over plain HTTP (`POST /stream`, `GET /stream/sse`) where WebSocket cannot get
   * through. Raw mode is WebSocket only.
   */
  transports?: Transport[];
  /** Attempts of a transport that fail before `open`, after which the next is tried. Default 2. */
  fallbackAfter?: number;
  /** An attempt not open within this many ms counts as failed (0: no limit). Default 10000. */
  openTimeout?: number;
  /** On a fallback, try WebSocket again this often (ms, jittered ×0.5–1.5; 0: never). Default 30000. */
  upgradeProbe?: number;
  /** A fetch implementation for the HTTP transports (default: the global one). */
  fetch?: typeof fetch;
  /** An EventSource implementation for the SSE transport (default: the global one). */
  EventSource?: unknown;
}

export type Transport = 'websocket' | 'http_stream' | 'sse';

/**
 * A session over plain HTTP that looks like a WebSocket to TetherClient (readyState, send,
 * close, onopen/onmessage/onclose): `POST /stream` (HttpStreamSocket) or `GET /stream/sse`
 * through an EventSource (SseSocket), commands as `POST /stream/send`.
 */
interface StreamingSocket {
  readonly readyState: number;
  readonly session: string | null;
  bufferedAmount: number;
  onopen: ((e: { type: 'open' }) => void) | null;
  onmessage: ((e: { type: 'message'; data: string }) => void) | null;
  onclose: ((e: { type: 'close'; code: number; reason: string; wasClean: boolean }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export declare class HttpStreamSocket implements StreamingSocket {
  constructor(url: string | URL, options?: { fetch?: typeof fetch });
  readonly transport: 'http_stream';
}
export interface HttpStreamSocket extends StreamingSocket {}
export declare class SseSocket implements StreamingSocket {
  constructor(url: string | URL, options?: { fetch?: typeof fetch; EventSource?: unknown });
  readonly transport: 'sse';
}
export interface SseSocket extends StreamingSocket {}

/** Where a WebSocket URL's streaming endpoints are (`ws://h/p/ws?q` → `http://h/p/stream?q`, …). */
export declare function streamEndpoints(url: string | URL): { open: string; sse: string; send: string };

export declare const DEFAULTS: Readonly<Required<Omit<TetherOptions, 'WebSocket' | 'fetch' | 'EventSource'>>>;

export type CloseAdvice = 'reconnect' | 'hint' | 'stop';
export declare const CLOSE_CODES: Readonly<Record<number, [string, CloseAdvice]>>;
export declare function closeCodeInfo(code: number): { name: string; advice: CloseAdvice };
export declare function backoffCeiling(attempt: number, opts?: Partial<TetherOptions>): number;
export declare function backoffDelay(attempt: number, unit: number, opts?: Partial<TetherOptions>): number;

/** What `send()` transmits as a binary frame. */
export type BinaryData = ArrayBuffer | ArrayBufferView | Blob;
export declare function isBinary(data: unknown): data is BinaryData;
/** Payload bytes on the wire: UTF-8 bytes of a string, the byte length (or Blob size) of binary data. */
export declare function messageSize(data: string | BinaryData): number;

export type HeartbeatStep = { action: 'ping' } | { action: 'dead' } | { action: 'wait'; at: number };

export declare class Heartbeat {
  constructor(interval: number, timeout: number, now: number);
  readonly interval: number;
  readonly timeout: number;
  lastRtt: number | null;
  /** When the outstanding ping counts as unanswered; null when none is outstanding. */
  deadline(): number | null;
  onInbound(now: number): void;
  onPong(now: number, sentAt?: number | null): number | null;
  poll(now: number): HeartbeatStep;
}

export interface Ended {
  code?: number | null;
  byUser?: boolean;
  fatal?: string;
  adviceReconnect?: boolean;
  adviceRetryAfter?: number;
}

export type Decision = { retry: true; attempt: number; delay: number } | { retry: false; reason: string };

export declare class Reconnector {
  constructor(opts?: Partial<TetherOptions>);
  failures: number;
  onOpen(now: number): void;
  onClose(now: number, ended: Ended, unit: number): Decision;
}

export type State = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface CloseDetail {
  code: number;
  reason: string;
  wasClean: boolean;
  /** Who ended it: the client, the server, or the network (no closing handshake, code 1006). */
  initiator: 'client' | 'server' | 'network';
  willReconnect: boolean;
  /** ms until the next attempt; null when stopping or waiting for the browser to go online. */
  retryIn: number | null;
  attempt: number;
  /** The transport the connection (or attempt) had. */
  transport: Transport;
}

export interface Publication<T = unknown> {
  channel: string;
  offset: number;
  /** Offsets are meaningful within an epoch; a new epoch means history was lost upstream. */
  epoch: string;
  data: T;
}

/** One subscription in a presence channel. */
export interface PresenceEntry {
  client: string;
  /** The connection's JWT `sub`, if any. */
  user?: string;
  /** The token's `info` claim, as given. */
  info?: unknown;
}

export interface TetherEvents {
  state: { state: State };
  open: { reconnected: boolean };
  close: CloseDetail;
  publication: Publication;
  /** A message that is not the protocol's: text as a string, binary as an ArrayBuffer. */
  message: { data: string | ArrayBuffer };
  /** `server: true`: a subscription the server made (the token's user channel and `channels` claim, recovered after a reconnect; or the server API's). `recovered`: after a resubscribe, whether every missed publication was replayed (null: no recovery asked); `reason`: why not, with `recovered: false`. */
  subscribed: { channel: string; resubscribe: boolean; recovered: boolean | null; reason: string | null; server?: boolean };
  /** The server API ended a subscription the server had made (`POST /api/unsubscribe`). */
  unsubscribed: { channel: string };
  rtt: { ms: number };
  /** The client moved to another transport: after failures of `from`, or back to WebSocket once it gets through. */
  transport: { transport: Transport; from: Transport; reason: string };
  /** The id the server gave this connection (its first reply carries it). */
  identified: { clientId: string };
  /** Membership changes of channels with `join_leave` (a busy channel's come in batches, one event each). */
  join: { channel: string; info: PresenceEntry };
  leave: { channel: string; info: PresenceEntry };
  /** A user's first subscription to the channel began (on any node). */
  user_join: { channel: string; info: PresenceEntry };
  /** A user's last subscription to the channel ended. */
  user_leave: { channel: string; info: PresenceEntry };
  error: { id: number | null; code: string; message: string };
  /**
   * Emitted once when the client stops (until the next `connect()`): 'closed by the
   * application', 'the page was hidden', or why reconnecting cannot help.
   */
  stopped: { reason: string };
}

export declare class TetherClient extends EventTarget {
  constructor(url: string | URL, options?: TetherOptions);
  readonly url: string;
  readonly state: State;
  /** The transport of the current (or next) connection. */
  readonly transport: Transport;
  /** True while a reconnect waits for the browser's `online` event. */
  readonly waitingForOnline: boolean;
  /** Extensions agreed on the current connection (e.g. permessage-deflate), '' when none. */
  readonly extensions: string;
  rtt: number | null;
  /** The current connection's id as others see it in presence (JSON mode); null until known. */
  clientId: string | null;
  nextRetryAt: number | null;
  lastClose: CloseDetail | null;
  stats: { connectAttempts: number; opens: number; heartbeatTimeouts: number };
  on<K extends keyof TetherEvents>(type: K, fn: (detail: TetherEvents[K]) => void): () => void;
  /** Start connecting (again after a stop); while a getToken is in flight, once it settles. */
  connect(): void;
  /**
   * Close with `code` (1000 or 3000–4999) and stop. Reports at once, even if `connect()` follows
   * before the socket has closed: pending commands, queued sends and unconfirmed subscribes
   * reject ("close() was called before …"), then `close` (initiator 'client'; wasClean: the
   * socket was open) and `stopped` come, once. The old socket finishes closing unobserved.
   */
  close(code?: number, reason?: string): void;
  dispose(): void;
  subscribe<T = unknown>(channel: string, handler?: (data: T, publication: Publication<T>) => void): Promise<void>;
  unsubscribe(channel: string, handler?: (data: any, publication: Publication) => void): void;
  publish(channel: string, data: unknown): Promise<{ offset?: number; delivered?: number }>;
  /** Who is in a presence channel this client subscribes to, by client id. */
  presence(channel: string): Promise<Record<string, PresenceEntry>>;
  /** A page of a subscribed channel's history: the latest `limit`, or the first `limit` after `since`. */
  history(
    channel: string,
    options?: { limit?: number; since?: { epoch: string; offset: number }; reverse?: boolean },
  ): Promise<{ publications: { offset: number; data: unknown }[]; epoch: string; offset: number; recovered?: false; reason?: string }>;
  /** How many clients and distinct users are in a presence channel. */
  presenceStats(channel: string): Promise<{ numClients: number; numUsers: number }>;
  /**
   * Send as is: a string as a text frame, binary data as a binary frame (anything else as its
   * String() text). Queued while disconnected and while the socket is over `maxBufferedAmount`
   * (queued bytes are copied); resolves once handed to the socket, rejects when the queue is full.
   */
  send(data: string | BinaryData): Promise<void>;
}

export declare function connect(url: string | URL, options?: TetherOptions): TetherClient;
