// Polling: wait until something answers, a throw counting as not yet.

/** Poll `probe` every `intervalMs` until it answers true (a throw counts as not yet). */
export async function waitFor(what: string, probe: () => Promise<boolean>, timeoutMs = 60_000, intervalMs = 200): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what} did not come up within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
