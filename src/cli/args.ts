// Command-line parsing with node's util.parseArgs: options typed from their declaration.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from './errors';

type Options = NonNullable<ParseArgsConfig['options']>;

/**
 * Parse one command's arguments; `names` are its positional arguments, all required, no more
 * accepted. parseArgs' own errors ("Unknown option '--x'. To specify…") are cut to their first sentence.
 */
export function parse<const O extends Options>(command: string, args: string[], options: O, names: string[]) {
  let parsed;
  try {
    parsed = parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(`${command}: ${(err as Error).message.split(/\.( |$)/)[0]}`);
  }
  const { positionals, values } = parsed;
  if (positionals.length < names.length) throw new UsageError(`${command}: missing <${names[positionals.length]}>`);
  if (positionals.length > names.length) throw new UsageError(`${command}: unexpected argument "${positionals[names.length]}"`);
  return { positionals, values };
}

/** An option the command cannot do without. */
export function required<T>(command: string, value: T | undefined, option: string): T {
  if (value === undefined || value === '') throw new UsageError(`${command}: ${option} is required`);
  return value;
}
