// Type declarations for tether.js.

export declare const SUBPROTOCOL: 'tether.v1.json';

export interface TetherOptions {
  /** 'json' speaks tether.v1.json; 'raw' is a plain WebSocket (text "ping" → "pong"). Default 'json'. */
  protocol?: 'json' | 'raw';
  /** Heartbeat cadence, ms. Default 25000. */
  pingInterval?: number;
  /** Silence tolerated after pingInterval before the server counts as dead, ms. Default 10000. */
  pongTimeout?: number;
  /** Backoff: first window (ms, default 1000), cap (ms, default 30000), growth (default 2). */
  backoffInitial?: number;
  backoffMax?: number;
  backoffFactor?: number;
  /** A connection up this long resets the backoff, ms. Default 5000. */
  minUptime?: number;
  /** Consecutive failed attempts before giving up. Default Infinity. */
  maxAttempts?: number;
  /** Sends buffered while disconnected; one more rejects. Default 1000. */
  offlineQueue?: number;
  rawPing?: string;
  rawPong?: string;
  /** Stop reconnecting when the page is hidden for navigation (the browser closes with 1001). Default true. */
  closeOnPageHide?: boolean;
  /** Connect in the constructor. Default true. */
  autoConnect?: boolean;
  /** A WebSocket implementation where there is no global one (e.g. the `ws` package in Node). */
  WebSocket?: unknown;
}

export declare const DEFAULTS: Readonly<Required<Omit<TetherOptions, 'WebSocket'>>>;

export type CloseAdvice = 'reconnect' | 'hint' | 'stop';
export declare const CLOSE_CODES: Readonly<Record<number, [string, CloseAdvice]>>;
export declare function closeCodeInfo(code: number): { name: string; advice: CloseAdvice };
export declare function backoffCeiling(attempt: number, opts?: Partial<TetherOptions>): number;
export declare function backoffDelay(attempt: number, unit: number, opts?: Partial<TetherOptions>): number;

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
  message: { data: unknown };
  /** `recovered`: after a resubscribe, whether every missed publication was replayed (null: no recovery asked). */
  subscribed: { channel: string; resubscribe: boolean; recovered: boolean | null };
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
  send(text: string): Promise<void>;
}

export declare function connect(url: string | URL, options?: TetherOptions): TetherClient;
