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
  /** Sends buffered while disconnected; one more rejects. Default 1000. */
  offlineQueue?: number;
  /**
   * Payload bytes buffered while disconnected (see `messageSize`); a send that would go beyond
   * rejects, as does one larger than this on its own. Default Infinity (only `offlineQueue` bounds).
   */
  offlineQueueBytes?: number;
  /** Raw mode's heartbeat: the text sent as a ping, and the text that answers it. */
  rawPing?: string;
  rawPong?: string;
  /** Stop reconnecting when the page is hidden for navigation (the browser closes with 1001). Default true. */
  closeOnPageHide?: boolean;
  /** Connect in the constructor. Default true. */
  autoConnect?: boolean;
  /**
   * A WebSocket implementation where there is no global one (e.g. the `ws` package in Node). It
   * is called as `new WebSocket(url)` or `new WebSocket(url, [protocol])`; to give it options
   * of its own, pass a subclass that adds them.
   */
  WebSocket?: unknown;
}

export declare const DEFAULTS: Readonly<Required<Omit<TetherOptions, 'WebSocket'>>>;

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
}

export interface Publication<T = unknown> {
  channel: string;
  offset: number;
  /** Offsets are meaningful within an epoch; a new epoch means history was lost upstream. */
  epoch: string;
  data: T;
}

export interface TetherEvents {
  state: { state: State };
  open: { reconnected: boolean };
  close: CloseDetail;
  publication: Publication;
  /** A message that is not the protocol's: text as a string, binary as an ArrayBuffer. */
  message: { data: string | ArrayBuffer };
  /** `recovered`: after a resubscribe, whether every missed publication was replayed (null: no recovery asked); `reason`: why not, with `recovered: false`. */
  subscribed: { channel: string; resubscribe: boolean; recovered: boolean | null; reason: string | null };
  rtt: { ms: number };
  error: { id: number | null; code: string; message: string };
  stopped: { reason: string };
}

export declare class TetherClient extends EventTarget {
  constructor(url: string | URL, options?: TetherOptions);
  readonly url: string;
  readonly state: State;
  /** True while a reconnect waits for the browser's `online` event. */
  readonly waitingForOnline: boolean;
  /** Extensions agreed on the current connection (e.g. permessage-deflate), '' when none. */
  readonly extensions: string;
  rtt: number | null;
  nextRetryAt: number | null;
  lastClose: CloseDetail | null;
  stats: { connectAttempts: number; opens: number; heartbeatTimeouts: number };
  on<K extends keyof TetherEvents>(type: K, fn: (detail: TetherEvents[K]) => void): () => void;
  connect(): void;
  close(code?: number, reason?: string): void;
  dispose(): void;
  subscribe<T = unknown>(channel: string, handler?: (data: T, publication: Publication<T>) => void): Promise<void>;
  unsubscribe(channel: string, handler?: (data: any, publication: Publication) => void): void;
  publish(channel: string, data: unknown): Promise<{ offset?: number; delivered?: number }>;
  /**
   * Send as is: a string as a text frame, binary data as a binary frame (anything else as its
   * String() text). Queued while disconnected (queued bytes are copied); resolves once handed
   * to the socket.
   */
  send(data: string | BinaryData): Promise<void>;
}

export declare function connect(url: string | URL, options?: TetherOptions): TetherClient;
