// `fermata`: the operator's command line for runbooks on Temporal.
import { approve, decide, reject } from './answer';
import { explainError, UsageError } from './errors';
import { list } from './list';
import { recover } from './recover';
import { start } from './start';
import { status } from './status';
import { watch } from './watch';

const usage = `Usage: fermata <command> [options]

  list                                   runbooks, and the targets of the targets file
  list --running                         runbooks in flight, from the search attributes: those holding
                                         at a gate or waiting for a decision first, then those waiting
                                         for their maintenance window, then those working
  start <runbook> --target <name>        start a runbook (prints its workflow id and Web UI link)
        [--input <file.json>] [--dry-run] [--id <workflow id>]
                                         --dry-run waits for the plan and changes nothing
  status <id>                            the step table the Web UI shows (its current details), and
                                         the commands that answer a waiting runbook
  watch <id>                             follow until the runbook ends or waits for a person: on a
                                         terminal a live step list with progress bars, otherwise a
                                         line per change
  approve <id> --gate <gate> --by <name> [--comment <text>]
  reject <id> --gate <gate> --by <name> --reason <text>
  decide <id> retry|skip|abort|rollback --by <name> [--comment <text>]
  recover <target> [--yes] [--by <name>] what ended (terminated) runs left on the target, with their
                                         owner's state, undone once confirmed (--yes: without asking)

Environment:
  TEMPORAL_ADDRESS    Temporal frontend (default 127.0.0.1:7233)
  TEMPORAL_NAMESPACE  namespace (default "default")
  TEMPORAL_API_KEY    API key (Temporal Cloud); implies TLS
  TEMPORAL_TLS        "true" for TLS with the system's CAs ("false" turns it off)
  TEMPORAL_TLS_CLIENT_CERT_PATH, TEMPORAL_TLS_CLIENT_KEY_PATH   client certificate and key (mTLS)
  TEMPORAL_TLS_SERVER_CA_CERT_PATH, TEMPORAL_TLS_SERVER_NAME    the server's CA, and its name if not the address's
  FERMATA_UI_URL      Temporal Web UI, for links (default http://127.0.0.1:8233)
  FERMATA_TARGETS     targets file (default .data/targets.yaml of the repository)`;

const commands: Record<string, (args: string[]) => void | Promise<void>> = { list, start, status, watch, approve, reject, decide, recover };

async function main(argv: string[]): Promise<number> {
  const [name, ...args] = argv;
  if (!name || ['help', '--help', '-h'].includes(name) || args.includes('--help') || args.includes('-h')) {
    console.log(usage);
    return 0;
  }
  const command = Object.hasOwn(commands, name) ? commands[name] : undefined;
  if (!command) throw new UsageError(`unknown command "${name}"`);
  await command(args);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => (process.exitCode = code),
  (err: unknown) => {
    const usageError = err instanceof UsageError;
    console.error(`fermata: ${explainError(err)}${usageError ? ' (see fermata --help)' : ''}`);
    process.exitCode = usageError ? 2 : 1;
  },
);
