// What `fermata watch` shows while it follows a runbook. On a terminal, a live step list that
// redraws in place (cli-progress), with a bar for a running step that reports progress; anywhere
// else (a pipe, a log file, a test), plain lines, one for each change.
import { Format, MultiBar, type Options, type Params, type SingleBar } from 'cli-progress';
import { q } from '../shared/errors';
import { fraction, progressOf, type StepProgress } from '../shared/progress';
import { retryText, stepIcon, summarize, type RunbookStatus, type StepStatus } from '../shared/status';
import { note, when, words } from './format';

export interface LiveView {
  /** A new status (every poll; unchanged parts print or redraw nothing). */
  update(status: RunbookStatus): void;
  /** A line about the watching itself ("no worker answered…"). */
  note(line: string): void;
  /** Leave the view as it is: what follows prints below it. */
  stop(): void;
}

/** The live list on a terminal, plain lines elsewhere. */
export const liveView = (stream: NodeJS.WriteStream = process.stdout): LiveView =>
  stream.isTTY ? new BarView(stream) : new LineView(stream);

/** A number of seconds as people say it: "45 s", "3 min 20 s", "2 h 5 min". */
export function duration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ''}`;
  return `${Math.floor(s / 3600)} h${Math.floor((s % 3600) / 60) ? ` ${Math.floor((s % 3600) / 60)} min` : ''}`;
}

/** "40% (24000 of 60000 rows), 8000 rows/s, ETA 5 s": what the step reports, nothing guessed. */
export function progressText(p: StepProgress): string {
  const unit = p.unit ? ` ${p.unit}` : '';
  return [
    `${Math.floor(100 * fraction(p))}% (${p.done} of ${p.total}${unit})`,
    p.perSecond !== undefined ? `${p.perSecond}${unit}/s` : '',
    p.etaSeconds !== undefined ? `ETA ${duration(p.etaSeconds)}` : '',
  ]
    .filter(Boolean)
    .join(', ');
}

/** What a step shows besides its state: progress or evidence while it runs; then its error or evidence. */
export function stepDetail(step: StepStatus): string {
  if (step.state !== 'running') return note(step) || step.title;
  const p = progressOf(step.evidence);
  return p ? progressText(p) : step.retry ? retryText(step.retry) : summarize(step.evidence) || step.title;
}

/** "■ runbook waiting approval at gate …" when the run's state changed from `before` to `now`. */
function stateLine(before: RunbookStatus | undefined, now: RunbookStatus): string | undefined {
  if (now.state === (before?.state ?? 'running')) return undefined;
  const at = now.pendingGate?.since ?? now.pendingDecision?.since ?? new Date();
  const why = now.pendingGate
    ? ` at gate ${q(now.pendingGate.name)}`
    : now.pendingDecision
      ? ` on step ${q(now.pendingDecision.step)}`
      : now.nextWindow && now.state === 'waiting_window'
        ? ` until ${now.nextWindow.opensAt}`
        : now.waitingForTarget && now.state === 'waiting_target'
          ? `: ${q(now.target)} is held by ${q(now.waitingForTarget.workflowId)} (${now.waitingForTarget.runbook})`
          : '';
  return `${when(at)}  ■ runbook ${words(now.state)}${why}`;
}

const nameWidth = (s: RunbookStatus): number => Math.max(...s.steps.map((st) => st.name.length));
const head = (step: StepStatus, width: number): string =>
  `${stepIcon[step.state]} ${step.name.padEnd(width)}  ${words(step.state).padEnd(11)}`;

/** One line per change: a step's state, or what a running step reports (each new progress figure). */
class LineView implements LiveView {
  private readonly shown = new Map<string, string>();
  private last?: RunbookStatus;

  constructor(private readonly stream: NodeJS.WritableStream) {}

  update(now: RunbookStatus): void {
    const width = nameWidth(now);
    const lines: { at: Date; line: string }[] = [];
    for (const step of now.steps) {
      const detail = stepDetail(step);
      const key = `${step.state} ${step.startedAt} ${detail}`;
      const seen = this.shown.get(step.name);
      this.shown.set(step.name, key);
      if (key === seen || (seen === undefined && step.state === 'pending')) continue;
      // A step's first running line is stamped with its start; later ones (progress) with now.
      const stamp = step.state !== 'running' ? step.endedAt : seen?.startsWith(`running ${step.startedAt} `) ? undefined : step.startedAt;
      const at = stamp ? new Date(stamp) : new Date();
      lines.push({ at, line: `${when(at)}  ${head(step, width)}  ${detail}` });
    }
    // In the order things happened: a first look at a rolled-back run lists the rollbacks last.
    for (const { line } of lines.sort((a, b) => a.at.getTime() - b.at.getTime())) this.write(line);
    const state = stateLine(this.last, now);
    if (state) this.write(state);
    this.last = now;
  }

  note(line: string): void {
    this.write(line);
  }

  stop(): void {}

  private write(line: string): void {
    this.stream.write(`${line}\n`);
  }
}

interface Row {
  step: StepStatus;
  width: number;
  /** What the step reports while it runs, if it reports progress: it gets a bar. */
  progress?: StepProgress;
}

/** The step list redrawn in place; a running step with progress gets a bar. */
class BarView implements LiveView {
  private readonly bars: MultiBar;
  private readonly rows = new Map<string, SingleBar>();
  private last?: RunbookStatus;

  constructor(stream: NodeJS.WritableStream) {
    this.bars = new MultiBar({
      stream,
      format: (options: Options, params: Params, row: Row) => {
        const detail = row.progress ? `${Format.BarFormat(params.progress, options)} ${progressText(row.progress)}` : stepDetail(row.step);
        return `${head(row.step, row.width)}  ${detail}`;
      },
      barsize: 24,
      barCompleteChar: '█',
      barIncompleteChar: '░',
      hideCursor: true,
      // Ctrl-C is watch's to handle: it stops the view (restoring the cursor) and exits.
      gracefulExit: false,
    });
  }

  update(now: RunbookStatus): void {
    const width = nameWidth(now);
    for (const step of now.steps) {
      const progress = step.state === 'running' ? progressOf(step.evidence) : undefined;
      const [value, total] = progress ? [progress.done, progress.total] : [0, 1];
      const row: Row = { step, width, progress };
      const bar = this.rows.get(step.name);
      if (!bar) {
        this.rows.set(step.name, this.bars.create(total, value, row));
        continue;
      }
      bar.setTotal(total);
      bar.update(value, row);
    }
    const state = stateLine(this.last, now);
    if (state) this.bars.log(`${state}\n`);
    this.last = now;
  }

  note(line: string): void {
    this.bars.log(`${line}\n`);
  }

  stop(): void {
    this.bars.update(); // draws what was logged since the last frame; stop() alone would drop it
    this.bars.stop();
  }
}
