// Notifications of gates and decisions: a Slack-compatible message POSTed to the webhook the run or
// its target names. The URL is resolved here, in the worker, and never leaves it — it is not in the
// request, the result or any error, which name the webhook and its host only. One call is one
// attempt: the runbook retries (see `notifyRetry` in src/workflows/runbook.ts) and audits each one.
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { describe, ErrorType, q } from '../shared/errors';
import { decisionActions } from '../shared/messages';
import { resolveWebhook } from '../targets';
import type { NotifyRequest } from '../shared/notify-request';
import { uiUrl, workflowUrl } from '../temporal-connection';

/** A delivered notification. */
export interface Delivery {
  webhook: string;
  host: string;
  status: number;
}

/** Where the message points: the workflow in the Web UI, and the ids the CLI takes. */
export interface Place {
  uiUrl: string;
  namespace: string;
  workflowId: string;
  runId: string;
}

/** How long a webhook has to answer. */
const NOTIFY_TIMEOUT_MS = 10_000;

/** The commands that answer the notification. */
function commands(r: NotifyRequest, workflowId: string): { answer: string; other?: string } {
  if (r.gate) {
    return {
      answer: `fermata approve ${workflowId} --gate ${r.gate.name} --by <you>`,
      other: `fermata reject ${workflowId} --gate ${r.gate.name} --by <you> --reason <text>`,
    };
  }
  return { answer: `fermata decide ${workflowId} ${decisionActions.join('|')} --by <you>` };
}

// Slack's mrkdwn: &, < and > are escaped; a code block cannot hold a fence of its own.
const esc = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const code = (text: string): string => '`' + esc(text).replace(/`/g, "'") + '`';
const clip = (text: string, max: number): string => (text.length > max ? text.slice(0, max - 1) + '…' : text);

/**
 * The message: `text` is readable mrkdwn on its own (Slack's notification and fallback, or any chat
 * that takes `{"text": ...}`); `blocks` lays out the same for Slack.
 */
export function slackMessage(r: NotifyRequest, p: Place): { text: string; blocks: object[] } {
  const link = `<${workflowUrl(p)}|Open ${esc(p.workflowId)} in the Temporal Web UI>`;
  const cli = commands(r, p.workflowId);
  const approvers = r.approvers.length ? r.approvers.map(esc).join(', ') : 'anyone';
  const section = (text: string) => ({ type: 'section', text: { type: 'mrkdwn', text } });
  const fields = (pairs: [string, string][]) => ({
    type: 'section',
    fields: pairs.map(([k, v]) => ({ type: 'mrkdwn', text: `*${k}*\n${v}` })),
  });

  if (r.gate) {
    const headline = `⏸ *${esc(r.runbook)}* on ${code(r.target)} holds at gate ${code(r.gate.name)} for approval.`;
    const does = `*Approving will* ${esc(clip(r.gate.does, 1000))}.`;
    const answer = `*Approve:* ${code(cli.answer)}\n*Reject:* ${code(cli.other!)}`;
    return {
      text: [headline, does, answer, `*Approvers:* ${approvers}`, link].join('\n'),
      blocks: [
        section(headline),
        fields([
          ['Runbook', esc(r.runbook)],
          ['Target', esc(r.target)],
          ['Gate', esc(r.gate.name)],
          ['Approvers', approvers],
        ]),
        section(does),
        section(answer),
        section(link),
      ],
    };
  }
  const { step, error } = r.decision!;
  const headline = `⚠ *${esc(r.runbook)}* on ${code(r.target)}: step ${code(step)} failed and waits for a decision.`;
  const failed = `*Error:*\n\`\`\`${esc(clip(error, 1500)).replace(/```/g, "'''")}\`\`\``;
  const choices =
    '*retry* runs the step again, *skip* goes on without it, *abort* stops here and leaves things as they are, *rollback* undoes the completed steps.';
  const answer = `*Decide:* ${code(cli.answer)}`;
  return {
    text: [headline, failed, choices, answer, `*Who may decide:* ${approvers}`, link].join('\n'),
    blocks: [
      section(headline),
      fields([
        ['Runbook', esc(r.runbook)],
        ['Target', esc(r.target)],
        ['Failed step', esc(step)],
        ['Who may decide', approvers],
      ]),
      section(failed),
      section(`${choices}\n${answer}`),
      section(link),
    ],
  };
}

export function createNotifyActivities() {
  return {
    /** POST the notification to the run's webhook once; undefined when neither the run nor its target names one. */
    async notifyWebhook(request: NotifyRequest): Promise<Delivery | undefined> {
      const webhook = resolveWebhook(request.target, request.webhook);
      if (!webhook) return undefined;
      const where = { runbook: request.runbook, step: request.gate?.name ?? request.decision?.step, phase: 'notify' };
      const fail = (host: string, reason: string, retryable: boolean, status?: number) =>
        ApplicationFailure.create({
          type: ErrorType.NotifyFailed,
          message: describe(where, `webhook ${q(webhook.name)}${host ? ` (${host})` : ''}: ${reason}`),
          nonRetryable: !retryable,
          details: [{ webhook: webhook.name, host, status }],
        });

      let url: URL;
      try {
        url = new URL(webhook.url);
        if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error();
      } catch {
        throw fail('', 'not an http(s) URL (check the targets file)', false);
      }
      const { info } = Context.current();
      const { workflowId, runId } = info.workflowExecution ?? { workflowId: '-', runId: '-' };
      const place: Place = { uiUrl: uiUrl(), namespace: info.workflowNamespace ?? 'default', workflowId, runId };

      let response: Response;
      try {
        response = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json; charset=utf-8' },
          body: JSON.stringify(slackMessage(request, place)),
          signal: AbortSignal.timeout(NOTIFY_TIMEOUT_MS),
        });
      } catch (err) {
        throw fail(url.host, unreachable(err), true);
      }
      const reply = await response.text().catch(() => '');
      if (!response.ok) {
        // A client error (Slack: 403 invalid_token, 404 no_service, 410 channel_is_archived) stays one
        // until someone fixes the targets file; a server error, a timeout or a rate limit may pass.
        const retryable = response.status >= 500 || response.status === 408 || response.status === 429;
        const said = scrub(reply, url);
        throw fail(
          url.host,
          `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ''}${said ? `: ${said}` : ''}`,
          retryable,
          response.status,
        );
      }
      return { webhook: webhook.name, host: url.host, status: response.status };
    },
  };
}

/** Why a request got no answer, from the error's code only: never a message that could hold the URL. */
function unreachable(err: unknown): string {
  if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError'))
    return `no answer within ${NOTIFY_TIMEOUT_MS / 1000} s`;
  const cause = (err as { cause?: { code?: unknown; errors?: { code?: unknown }[] } }).cause;
  const codeOf = cause?.code ?? cause?.errors?.[0]?.code;
  return typeof codeOf === 'string' && /^[A-Z_]+$/.test(codeOf) ? `unreachable (${codeOf})` : 'unreachable';
}

/** A webhook's reply, short, on one line, without the URL or its path should the server echo them. */
function scrub(reply: string, url: URL): string {
  let text = reply.replace(/\s+/g, ' ').trim();
  for (const secret of [url.href, url.pathname + url.search, url.pathname].filter((s) => s.length > 1))
    text = text.split(secret).join('***');
  return clip(text, 120);
}
