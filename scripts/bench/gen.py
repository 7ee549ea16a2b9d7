#!/usr/bin/env python3
"""Helpers for scripts/bench-steps.sh: generates inventories/runbooks/playbooks for the
benchmarks and analyses their results. Standard library only.

  gen.py onehost DIR N            inventory (1 host h1) + runbooks-seq (N steps), runbooks-one
                                  (1 step), runbooks-par (N services x 1 step)
  gen.py dag DIR HOSTS SERVICES STEPS_PER_SERVICE SEED
                                  DAG of sleeps (0.1..0.5 s), writes DIR/durations.json
  gen.py many DIR HOSTS SECONDS   HOSTS hosts, one service each, one `sleep SECONDS` step
  gen.py ansible DIR N OVERLAY    ansible.cfg + hosts.ini (from the lab overlay) + playbooks
  gen.py dag-analyse PLAN_JSON JOURNAL DURATIONS_JSON
                                  critical path / waves, known and measured durations (JSON)
  gen.py median V...              median of numbers
"""
import json
import os
import random
import statistics
import sys
from datetime import datetime


def w(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def site_block():
    return '[sites.lab]\ndescription = "bench site"\nrole = "primary"\n\n'


def host_block(h):
    # Address and port are replaced by the lab overlay.
    return (f'[hosts.{h}]\naddress = "{h}.bench.invalid"\nsite = "lab"\n'
            f'role = "app-server"\n\n')


def service_block(s, host, deps=()):
    d = ", ".join(f'"{x}"' for x in deps)
    return (f'[services.{s}]\nkind = "application"\nrto = "1h"\n'
            f'depends_on = [{d}]\nhost = "{host}"\n\n')


def step(service, sid, run, timeout="1m"):
    return (f'[[{service}.restore]]\nid = "{sid}"\nkind = "exec"\nrun = "{run}"\n'
            f'timeout = "{timeout}"\n\n')


def onehost(d, n):
    n = int(n)
    inv = site_block() + host_block("h1") + service_block("bench", "h1")
    par = [f"p{i:04d}" for i in range(1, n + 1)]
    for s in par:
        inv += service_block(s, "h1")
    w(f"{d}/inventory/inventory.toml", inv)
    empty_par = "".join(f"{s}.restore = []\n" for s in par)
    w(f"{d}/runbooks-seq/bench.toml",
      empty_par + "\n" + "".join(step("bench", f"s{i:04d}", "true") for i in range(1, n + 1)))
    w(f"{d}/runbooks-one/bench.toml", empty_par + "\n" + step("bench", "s0001", "true"))
    w(f"{d}/runbooks-par/bench.toml",
      "bench.restore = []\n\n" + "".join(step(s, "only", "true") for s in par))


def dag(d, nhosts, nserv, per, seed):
    nhosts, nserv, per = int(nhosts), int(nserv), int(per)
    rng = random.Random(int(seed))
    hosts = [f"d{i:02d}" for i in range(1, nhosts + 1)]
    servs = [f"s{i:02d}" for i in range(1, nserv + 1)]
    inv = site_block() + "".join(host_block(h) for h in hosts)
    rb = ""
    durations = {}
    for i, s in enumerate(servs):
        k = 0 if i == 0 else min(i, rng.choice([0, 1, 1, 2, 2, 3]))
        deps = sorted(rng.sample(servs[:i], k)) if k else []
        inv += service_block(s, hosts[i % nhosts], deps)
        for j in range(1, per + 1):
            dur = rng.choice([0.1, 0.2, 0.3, 0.4, 0.5])
            sid = f"t{j}"
            durations[f"{s}/{sid}"] = dur
            rb += step(s, sid, f"sleep {dur}")
    w(f"{d}/inventory/inventory.toml", inv)
    w(f"{d}/runbooks/dag.toml", rb)
    w(f"{d}/durations.json", json.dumps(durations, indent=1))


def many(d, nhosts, secs):
    nhosts = int(nhosts)
    hosts = [f"m{i:02d}" for i in range(1, nhosts + 1)]
    inv = site_block() + "".join(host_block(h) for h in hosts)
    rb = ""
    for i, h in enumerate(hosts, 1):
        inv += service_block(f"x{i:02d}", h)
        rb += step(f"x{i:02d}", "work", f"sleep {secs}")
    w(f"{d}/inventory/inventory.toml", inv)
    w(f"{d}/runbooks/many.toml", rb)


def parse_overlay(path):
    """Tiny reader of the lab overlay: [hosts.X] address/port/user/known_hosts/identity."""
    hosts, cur = {}, None
    for line in open(path):
        line = line.strip()
        if line.startswith("[hosts.") and not line.endswith(".vars]"):
            cur = hosts.setdefault(line[7:-1], {})
        elif line.startswith("["):
            cur = None
        elif cur is not None and "=" in line:
            k, v = (x.strip() for x in line.split("=", 1))
            cur[k] = v.strip('"')
    return hosts


def ansible(d, n, overlay):
    n = int(n)
    hosts = parse_overlay(overlay)
    lines = ["[bench]"]
    for h, v in sorted(hosts.items()):
        lines.append(
            f"{h} ansible_host={v['address']} ansible_port={v['port']} ansible_user={v['user']} "
            f"ansible_ssh_private_key_file={v['identity']} "
            f"ansible_ssh_common_args='-o UserKnownHostsFile={v['known_hosts']} "
            f"-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'")
    w(f"{d}/hosts.ini", "\n".join(lines) + "\n")
    w(f"{d}/ansible.cfg",
      "[defaults]\ninventory = hosts.ini\nhost_key_checking = True\n"
      "interpreter_python = /usr/bin/python3\nretry_files_enabled = False\n"
      "forks = 50\ngathering = explicit\nstdout_callback = default\n"
      f"local_tmp = {d}/tmp\n\n"
      "[ssh_connection]\npipelining = True\n"
      f"control_path_dir = {d}/cp\n"
      "ssh_args = -o ControlMaster=auto -o ControlPersist=60s\n")

    def play(name, count, module, hostsel="h1", cmd="true"):
        t = "".join(f"    - name: t{i}\n      {module}: {cmd}\n" for i in range(1, count + 1))
        w(f"{d}/{name}.yml",
          f"- hosts: {hostsel}\n  gather_facts: false\n  tasks:\n{t}")

    play("command-n", n, "ansible.builtin.command", cmd='"true"')
    play("command-1", 1, "ansible.builtin.command", cmd='"true"')
    play("raw-n", n, "ansible.builtin.raw", cmd='"true"')
    play("raw-1", 1, "ansible.builtin.raw", cmd='"true"')


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def dag_analyse(plan_json, journal, durations_json):
    plan = json.load(open(plan_json))
    known = json.load(open(durations_json))
    after = {s["id"]: list(s.get("after") or []) for s in plan["steps"]}
    started, finished, dur_ms, status = {}, {}, {}, {}
    run_start = run_end = None
    for line in open(journal):
        e = json.loads(line)
        ev = e["event"]
        if ev == "run_started":
            run_start = ts(e["at"])
        elif ev == "run_finished":
            run_end = ts(e["at"])
        elif ev == "step_started":
            started.setdefault(e["step"], ts(e["at"]))
        elif ev == "step_finished":
            finished[e["step"]] = ts(e["at"])
            dur_ms[e["step"]] = e["duration_ms"]
            status[e["step"]] = e["status"]
    # Topological order.
    order, seen = [], set()

    def visit(x):
        if x in seen:
            return
        seen.add(x)
        for p in after.get(x, []):
            visit(p)
        order.append(x)

    for x in after:
        visit(x)
    level = {}
    for x in order:
        level[x] = 1 + max((level[p] for p in after[x]), default=-1)
    nlev = 1 + max(level.values())

    def cp(dur):
        fin = {}
        for x in order:
            fin[x] = max((fin[p] for p in after[x]), default=0.0) + dur[x]
        return max(fin.values())

    def waves(dur):
        return sum(max(dur[x] for x in order if level[x] == k) for k in range(nlev))

    measured = {x: dur_ms.get(x, 0) / 1000.0 for x in order}
    # Step durations as seen by the scheduler: started -> finished (includes SSH round trips).
    observed = {x: finished.get(x, 0) - started.get(x, 0) for x in order}
    out = {
        "steps": len(order),
        "levels": nlev,
        "ok_steps": sum(1 for v in status.values() if v in ("ok", "done", "succeeded")),
        "statuses": sorted(set(status.values())),
        "sum_known_s": sum(known[x] for x in order),
        "cp_known_s": cp({x: known[x] for x in order}),
        "waves_known_s": waves({x: known[x] for x in order}),
        "cp_measured_s": cp(measured),
        "waves_measured_s": waves(measured),
        "cp_observed_s": cp(observed),
        "waves_observed_s": waves(observed),
        "plan_total_s": plan.get("estimate", {}).get("total_s"),
        "makespan_journal_s": (run_end - run_start) if run_start and run_end else None,
        "makespan_steps_s": (max(finished.values()) - min(started.values()))
        if started and finished else None,
    }
    print(json.dumps(out))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "onehost":
        onehost(*args)
    elif cmd == "dag":
        dag(*args)
    elif cmd == "many":
        many(*args)
    elif cmd == "ansible":
        ansible(*args)
    elif cmd == "dag-analyse":
        dag_analyse(*args)
    elif cmd == "median":
        vals = [float(v) for v in args if v not in ("", "NA")]
        print(f"{statistics.median(vals):.3f}" if vals else "NA")
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
