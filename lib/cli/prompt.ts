/** Confirmation prompts, asked on stderr so that stdout (and --json) stays clean. */
import { createInterface } from 'node:readline/promises';

/** Whether a human can answer a prompt: stdin is a terminal. */
export function canPrompt(): boolean {
  return process.stdin.isTTY === true;
}

/** Asks a yes/no question; only `y` or `yes` (any case) confirms. End of input declines. */
export async function confirm(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
  try {
    const closed = new Promise<string>((resolve) => rl.once('close', () => resolve('')));
    const answer = await Promise.race([rl.question(`${question} [y/N] `), closed]);
    return /^\s*y(es)?\s*$/i.test(answer);
  } finally {
    rl.close();
  }
}
