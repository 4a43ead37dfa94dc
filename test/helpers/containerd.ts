/**
 * A containerd of the tests' own: its config, root, state, temp dir and
 * sockets in a temp dir, the CRI plugin off, our server as a proxy
 * snapshotter. It runs in a private mount namespace with a tmpfs on /run,
 * so that what containerd 1.6 keeps at fixed paths (shim sockets in
 * /run/containerd/s, ctr's fifos, runc's state) never touches the
 * machine's own /run/containerd; `ctr` runs in the same namespace.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { mountSkipReason } from './require-mount.js';

const run = promisify(execFile);

const TOOLS = ['containerd', 'ctr', 'runc', 'unshare', 'nsenter'] as const;

function onPath(tool: string): boolean {
  return (process.env.PATH ?? '/usr/bin:/bin').split(':').some((dir) => dir !== '' && existsSync(`${dir}/${tool}`));
}

/** Why containerd cannot be run here, or undefined when it can. */
export function containerdSkipReason(): string | undefined {
  const mount = mountSkipReason();
  if (mount !== undefined) return mount;
  const missing = TOOLS.filter((t) => !onPath(t));
  if (missing.length > 0) return `the containerd tests need ${missing.join(', ')} (Debian: apt-get install containerd runc util-linux)`;
  if (!existsSync('/bin/busybox')) return 'the containerd tests need /bin/busybox (Debian: apt-get install busybox-static)';
  return undefined;
}

export interface Containerd {
  /** containerd's gRPC socket. */
  readonly address: string;
  /** The containerd namespace every `ctr` call uses. */
  readonly namespace: string;
  readonly pid: number;
  /** Runs `ctr` against this containerd, in its mount namespace; rejects with stderr on failure. */
  ctr(...args: string[]): Promise<{ stdout: string; stderr: string }>;
  /** Stops containerd and any shim it left, and removes the cgroups of the namespace. */
  stop(): Promise<void>;
}

export interface ContainerdOptions {
  /** Where everything of this containerd goes. */
  dir: string;
  /** containerd namespace for `ctr` (keep it unique: cgroups are named after it). */
  namespace: string;
  /** Proxy snapshotters: name -> socket. */
  proxies?: Record<string, string>;
  /** Seconds to wait for the socket. */
  timeout?: number;
  /** More TOML, appended to the config (plugin settings). */
  extraConfig?: string;
}

function toml(value: string): string {
  return JSON.stringify(value);
}

function configOf(o: ContainerdOptions): string {
  const lines = [
    'version = 2',
    `root = ${toml(`${o.dir}/root`)}`,
    `state = ${toml(`${o.dir}/state`)}`,
    `temp = ${toml(`${o.dir}/tmp`)}`,
    // No CRI (a Kubernetes node's), no /opt/containerd.
    'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt"]',
    '',
    '[grpc]',
    `  address = ${toml(`${o.dir}/containerd.sock`)}`,
    '[ttrpc]',
    `  address = ${toml(`${o.dir}/containerd.sock.ttrpc`)}`,
    '[debug]',
    '  address = ""',
    '  level = "info"',
    '[metrics]',
    '  address = ""',
    '',
    '[proxy_plugins]',
  ];
  for (const [name, address] of Object.entries(o.proxies ?? {})) {
    lines.push(`  [proxy_plugins.${toml(name)}]`, '    type = "snapshot"', `    address = ${toml(address)}`);
  }
  return `${lines.join('\n')}\n${o.extraConfig ?? ''}`;
}

async function waitFor(check: () => boolean, seconds: number, what: string, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  while (!check()) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`containerd exited (${child.exitCode ?? child.signalCode}) before ${what}:\n${log()}`);
    if (Date.now() > deadline) throw new Error(`containerd: no ${what} after ${seconds} s:\n${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Pids of processes whose command line names `needle` (the shims of this containerd name its socket). */
function processesNaming(needle: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').some((arg) => arg.includes(needle))) pids.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitGone(pids: number[], ms: number): Promise<number[]> {
  const deadline = Date.now() + ms;
  let left = pids.filter(alive);
  while (left.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    left = left.filter(alive);
  }
  return left;
}

/** Removes the (empty) cgroup directories runc made for `namespace`, in every hierarchy. */
function removeCgroups(namespace: string): void {
  const roots = existsSync('/sys/fs/cgroup/cgroup.controllers') ? ['/sys/fs/cgroup'] : readdirSync('/sys/fs/cgroup').map((h) => `/sys/fs/cgroup/${h}`);
  for (const root of roots) {
    const dir = `${root}/${namespace}`;
    if (!existsSync(dir)) continue;
    try {
      for (const child of readdirSync(dir, { withFileTypes: true })) if (child.isDirectory()) rmdirSync(`${dir}/${child.name}`);
      rmdirSync(dir);
    } catch {
      // Still in use: left for the kernel to report, not ours to force.
    }
  }
}

/** Starts containerd with `options`, ready once its socket accepts `ctr version`. */
export async function startContainerd(options: ContainerdOptions): Promise<Containerd> {
  mkdirSync(options.dir, { recursive: true });
  const config = `${options.dir}/config.toml`;
  writeFileSync(config, configOf(options));
  const address = `${options.dir}/containerd.sock`;
  const script = 'mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/containerd && exec containerd --config "$0"';
  const child = spawn('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c', script, config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const collect = (chunk: Buffer) => {
    log = (log + chunk.toString()).slice(-20_000);
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  const pid = child.pid;
  if (pid === undefined) throw new Error('containerd did not start');
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const ctr = (...args: string[]) =>
    run('nsenter', [`--mount=/proc/${pid}/ns/mnt`, '--', 'ctr', '--address', address, '--namespace', options.namespace, ...args], { maxBuffer: 64 * 1024 * 1024 }).catch(
      (err: { stderr?: string; message: string }) => {
        throw new Error(`ctr ${args.join(' ')} failed: ${err.stderr?.trim() || err.message}`, { cause: err });
      },
    );
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    // Shims outlive containerd by design; these are ours (they name our socket).
    const shims = processesNaming(address);
    for (const p of shims) process.kill(p, 'SIGKILL');
    await waitGone(shims, 5000);
    removeCgroups(options.namespace);
  };
  try {
    await waitFor(() => existsSync(address), options.timeout ?? 30, 'socket', child, () => log);
    await ctr('version');
  } catch (err) {
    await stop();
    throw err;
  }
  return { address, namespace: options.namespace, pid, ctr, stop };
}
