// Types for the part of `node:sqlite` the shell uses. Deno implements the
// module, but the @types/node release pinned in package.json (20.x)
// predates it; this file can go when that pin moves to 22 or later.
declare module "node:sqlite" {
  export type SQLInputValue =
    | null
    | number
    | bigint
    | string
    | Uint8Array;
  export interface StatementResultingChanges {
    changes: number | bigint;
    lastInsertRowid: number | bigint;
  }
  export class StatementSync {
    run(...params: SQLInputValue[]): StatementResultingChanges;
    get(...params: SQLInputValue[]): Record<string, SQLInputValue> | undefined;
    all(...params: SQLInputValue[]): Record<string, SQLInputValue>[];
  }
  export class DatabaseSync {
    constructor(path: string);
    exec(sql: string): void;
    prepare(sql: string): StatementSync;
    close(): void;
  }
}
