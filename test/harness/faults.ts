// Faults injected into the statements an activity sends, for the step harnesses: the `nth` statement
// matching `at` fails on the server (`error`) or kills its own connection (`kill`).
import { Client } from 'pg';

/** A statement of apply's that goes wrong. */
export interface StatementFault {
  at: RegExp;
  nth?: number;
  kind: 'error' | 'kill';
}

/** Run apply with `fault` injected into the activities' statements; the error it ended with. */
export async function failing(fault: StatementFault, apply: () => Promise<unknown>): Promise<Error> {
  const query = Client.prototype.query;
  let seen = 0;
  let fired = false;
  const spy = jest.spyOn(Client.prototype, 'query').mockImplementation(function (this: Client, ...args: unknown[]) {
    const text = typeof args[0] === 'string' ? args[0] : (args[0] as { text?: unknown } | undefined)?.text;
    if (!fired && typeof text === 'string' && fault.at.test(text) && ++seen === (fault.nth ?? 1)) {
      fired = true;
      const instead =
        fault.kind === 'kill' ? 'SELECT pg_terminate_backend(pg_backend_pid())' : `DO $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$`;
      return (query as (sql: string) => Promise<unknown>).call(this, instead);
    }
    return (query as (...a: unknown[]) => Promise<unknown>).apply(this, args);
  } as never);
  try {
    const error = await apply().then(
      () => undefined,
      (err: Error) => err,
    );
    expect(fired).toBe(true);
    expect(error?.message).toMatch(fault.kind === 'error' ? /injected fault/ : /terminat|connection/i);
    return error!;
  } finally {
    spy.mockRestore();
  }
}
