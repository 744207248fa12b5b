"""A realistic day for a 60-CSM pool, replayed fast, end to end: where did every message go?

Starts a real Dovecot (LMTP delivery), redis-server and a recording relay, and the real
`csm-router run` and `csm-router worker`. Then it replays a working day of 3,000 messages
(eight hours at 100x: under five minutes) in the mix a pooled inbox sees:

- new threads from customers (about 40 %), technical ones among them (5 %) for Support;
- customers answering in their threads (25 %), by their mail client's In-Reply-To;
- CSMs' replies copied to the alias (20 %), proven by the server's Authentication-Results;
- auto-replies (10 %).

Replies are written to threads whose forward has already arrived, as people would. At the
end every message is checked against where the rules say it goes: a new thread to exactly
one CSM, a customer's answer to its thread's owner, a technical request to Support (and a
note to the customer), a CSM's reply and an auto-reply nowhere. Latency is delivery to the
relay's receipt.

Usage: `./scripts/bench` runs it after the others; alone: `.venv/bin/python bench/day.py
[MESSAGES] [SPEEDUP]` (default 3000 100); `--product-src DIR` runs another checkout's
package with the same harness. Writes `bench/results/day.json`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import harness  # puts tests/ on the path for what follows
from harness import pct
from prometheus_client.parser import text_string_to_metric_families

from csm_router.demo.relay import Received, RecordingSmtp
from csm_router.demo.stage import compose
from support.servers import DovecotServer, RedisServer, free_ports

ALIAS = "success@acme.com"
SUPPORT = "support@acme.com"
CSMS = [f"csm{n:02d}@acme.com" for n in range(1, 61)]
AUTHSERV = "mx.acme.test"
DAY_SECONDS = 8 * 3600
TECHNICAL = ("Since this morning the API returns HTTP 500 on every call to /v2/export, with "
             "a stack trace in the response body. Our nightly sync is failing.")


@dataclass
class Sent:
    """One message of the day, and where it should end up."""

    kind: str  # new | technical | customer-reply | csm-reply | auto-reply
    message_id: str
    sender: str
    delivered: float
    thread: int | None = None  # index into Day.threads
    expected: str = ""  # the CSM a forward should go to, if known when sent


@dataclass
class Thread:
    customer: str
    subject: str
    first_id: str
    forward: Received | None = None
    replies: list[str] = field(default_factory=list)


def main(count: int, speedup: float) -> int:
    with harness.servers("day") as found:
        results = run(count, speedup, found.dovecot, found.redis, found.smtp, found.workdir)
    harness.save("day", results)
    return 0 if results["misrouted"] == 0 else 1


def run(count: int, speedup: float, dovecot: DovecotServer, redis: RedisServer,
        smtp: RecordingSmtp, workdir: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env.update(ROUTER_IMAP_URL=dovecot.imap_url(ALIAS), ROUTER_SMTP_URL=smtp.url,
               ROUTER_REDIS_URL=redis.url, ROUTER_ALIAS=f"Acme Customer Success <{ALIAS}>",
               ROUTER_POOL=", ".join(CSMS), ROUTER_SUPPORT_ADDRESS=SUPPORT,
               ROUTER_TRUSTED_AUTHSERV_ID=AUTHSERV, ROUTER_POLL_SECONDS="30",
               ROUTER_LOG_LEVEL="WARNING", ROUTER_DIGEST_ADDRESS="cs-lead@acme.com")
    (port,) = free_ports(1)
    env["ROUTER_WEB_ADDRESS"] = f"127.0.0.1:{port}"
    log = open(workdir / "product.log", "ab")  # noqa: SIM115  # closed below
    cmd = [sys.executable, "-m", "csm_router.cli"]
    procs = [subprocess.Popen([*cmd, name], env=harness.product_env(env), stdout=log,
                              stderr=log)
             for name in ("worker", "run", "web")]
    time.sleep(3)

    rng = random.Random(42)
    span = DAY_SECONDS / speedup
    at = sorted(rng.uniform(0, span) for _ in range(count))
    threads: list[Thread] = []
    sent: list[Sent] = []
    seen = 0
    forwards: dict[str, Received] = {}  # customer's Message-ID -> its forward

    def collect() -> None:
        nonlocal seen
        for r in smtp.messages[seen:]:
            forwards.setdefault(str(r.message["In-Reply-To"]), r)
        seen = len(smtp.messages)
        for t in threads:
            if t.forward is None and t.first_id in forwards:
                t.forward = forwards[t.first_id]

    began = time.time()
    for n, when in enumerate(at):
        time.sleep(max(0.0, began + when - time.time()))
        collect()
        answered = [i for i, t in enumerate(threads) if t.forward is not None
                    and t.forward.rcpt_tos[0] in CSMS]
        roll = rng.random()
        kind = ("auto-reply" if roll < 0.10 else "csm-reply" if roll < 0.30 else
                "customer-reply" if roll < 0.55 else "technical" if roll < 0.60 else "new")
        if kind in ("csm-reply", "customer-reply", "auto-reply") and not answered:
            kind = "new"
        if kind in ("new", "technical"):
            customer = f"c{n}@customer{n % 300}.com"
            subject = f"Question {n:04d}" if kind == "new" else f"Export failing {n:04d}"
            body = "Hello,\n\nhow do I share a dashboard?\n" if kind == "new" else TECHNICAL
            message_id, raw = compose(f"Customer {n} <{customer}>", subject, body, to=ALIAS)
            threads.append(Thread(customer, subject, message_id))
            item = Sent(kind, message_id, customer, 0.0, len(threads) - 1)
        else:
            index = rng.choice(answered)
            thread = threads[index]
            fwd = thread.forward
            assert fwd is not None
            owner = fwd.rcpt_tos[0]
            ref_subject = str(fwd.message["Subject"])
            if kind == "customer-reply":
                message_id, raw = compose(
                    f"Customer <{thread.customer}>", f"Re: {thread.subject}",
                    "Thanks, one more question about this.\n", to=ALIAS,
                    in_reply_to=thread.first_id)
                item = Sent(kind, message_id, thread.customer, 0.0, index, owner)
            elif kind == "csm-reply":
                message_id, raw = compose(
                    owner, f"Re: {ref_subject}", "Here is how to do it.\n",
                    to=thread.customer, cc=ALIAS, in_reply_to=str(fwd.message["Message-ID"]),
                    headers={"Authentication-Results":
                             f"{AUTHSERV}; dmarc=pass header.from=acme.com"})
                item = Sent(kind, message_id, owner, 0.0, index)
            else:
                message_id, raw = compose(
                    f"Customer <{thread.customer}>", f"Out of office: {thread.subject}",
                    "I am away until Monday.\n", to=ALIAS,
                    headers={"Auto-Submitted": "auto-replied"})
                item = Sent(kind, message_id, thread.customer, 0.0, index)
        dovecot.deliver(ALIAS, raw)
        item.delivered = time.time()
        sent.append(item)

    deadline = time.time() + 120
    expected_mail = sum(1 for s in sent if s.kind in ("new", "customer-reply")) + \
        2 * sum(1 for s in sent if s.kind == "technical")
    while time.time() < deadline and len(smtp.messages) < expected_mail:
        time.sleep(0.5)
    time.sleep(5)  # anything sent twice or wrongly would arrive in this time
    collect()
    scraped = scrape(f"http://127.0.0.1:{port}/metrics")
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    codes = [proc.wait(30) for proc in procs]
    log.close()
    results = judge(sent, threads, smtp.messages, forwards, span, codes)
    results["metrics"] = report_metrics(scraped, sent)
    results["lead"] = lead_view(env)
    return results


# Renders the digest the lead would get for today's figures, with the product's own code
# and environment (the replayed day is today, in UTC days).
DIGEST = """
import sys
from datetime import date, timedelta
from csm_router.lead import digest
from csm_router.lead import report
from csm_router.config import load_settings
from csm_router.runtime import Runtime
rt = Runtime.from_settings(load_settings())
today = date.today()
figures = report.build(rt.store, today, today + timedelta(days=1))
mail = digest.render_digest(rt.settings, figures, "replayed-day")
open(sys.argv[1], "wb").write(mail.as_bytes())
"""


def lead_view(env: dict[str, str]) -> dict[str, Any]:
    """`csm-router report --json` for the day, and the digest it makes (saved beside the
    results); empty where the product has no report."""
    day = datetime.now(UTC).date().isoformat()
    cmd = [sys.executable, "-m", "csm_router.cli", "report", "--since", day, "--json"]
    done = subprocess.run(cmd, env=harness.product_env(env), capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        print("report: not available in this product")
        return {}
    figures = json.loads(done.stdout)
    out = harness.ROOT / "bench" / "results" / "digest.eml"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", DIGEST, str(out)], env=harness.product_env(env),
                   check=True, timeout=120)
    csms = figures["csms"]
    medians = sorted(c["median_first_response_minutes"] for c in csms
                     if c["median_first_response_minutes"] is not None)
    flagged = [a for a in figures["accounts"] if a["flagged"]]
    taken = sorted(c["taken"] for c in csms)
    summary = {
        "csms": len(csms), "taken": sum(taken), "taken_min_max": [taken[0], taken[-1]],
        "replies": sum(c["replies"] for c in csms),
        "overdue": sum(c["overdue"] for c in csms),
        "to_support": sum(c["to_support"] for c in csms),
        "median_of_medians_min": medians[len(medians) // 2] if medians else None,
        "accounts": len(figures["accounts"]), "flagged_accounts": len(flagged),
        "most_touched": [(a["account"], a["touched_by"]) for a in flagged[:3]],
        "digest": str(out),
    }
    print(f"report: {summary['taken']} threads taken by {len(csms)} CSMs "
          f"({taken[0]}-{taken[-1]} each), {summary['replies']} replies, "
          f"{summary['overdue']} overdue, {summary['to_support']} to Support; "
          f"{summary['accounts']} accounts, {len(flagged)} touched by 3+ CSMs "
          f"(most: {summary['most_touched']}); digest saved to {out}")
    return summary


def scrape(url: str) -> dict[str, float]:
    """/metrics as {sample with its labels: value}; empty where the product has no web."""
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            body = answer.read().decode()
    except OSError:
        return {}
    found = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return found


def report_metrics(scraped: dict[str, float], sent: list[Sent]) -> dict[str, Any]:
    """What /metrics said at the end of the day, beside what the replay knows it sent."""
    if not scraped:
        print("/metrics: not served by this product")
        return {}

    def total(prefix: str) -> float:
        return sum(v for k, v in scraped.items() if k.startswith(prefix))

    kinds = Counter(s.kind for s in sent)
    seen = {
        "seen": (scraped.get("csm_router_messages_seen_total", 0), len(sent)),
        "forwarded": (total("csm_router_messages_routed_total{action=forward"),
                      kinds["new"] + kinds["customer-reply"]),
        "to Support": (total("csm_router_messages_routed_total{action=support"),
                       kinds["technical"]),
        "CSM replies": (total("csm_router_messages_routed_total{action=reply"),
                        kinds["csm-reply"]),
        "ignored": (total("csm_router_messages_ignored_total"), kinds["auto-reply"]),
        "quarantined": (total("csm_router_messages_quarantined_total"), 0),
    }
    count = scraped.get("csm_router_forward_seconds_count", 0)
    within = {le: scraped.get(f"csm_router_forward_seconds_bucket{{le={le}}}", 0)
              for le in ("1.0", "2.0", "5.0")}
    summary = {
        "counted_vs_sent": {k: {"metrics": m, "sent": n} for k, (m, n) in seen.items()},
        "delivery_attempts": total("csm_router_delivery_attempts_total"),
        "delivery_failures": total("csm_router_delivery_failures_total"),
        "forward_seconds_count": count,
        "forward_within_s": {le: (n / count if count else None) for le, n in within.items()},
        "open_threads": total("csm_router_open_threads"),
        "csms_with_decisions": sum(1 for k, v in scraped.items()
                                   if k.startswith("csm_router_decisions_total") and v),
    }
    print("/metrics at the end: " + ", ".join(f"{k} {m:.0f} (sent {n})"
                                              for k, (m, n) in seen.items()))
    print(f"  {summary['delivery_attempts']:.0f} delivery attempts, "
          f"{summary['delivery_failures']:.0f} failures; {count:.0f} first forwards timed "
          "from receipt, " + ", ".join(
              f"{(n / count if count else 0):.0%} within {le} s" for le, n in within.items()))
    return summary


def judge(sent: list[Sent], threads: list[Thread], mail: list[Received],
          forwards: dict[str, Received], span: float, codes: list[int]) -> dict[str, Any]:
    carried = Counter(str(r.message["In-Reply-To"]) for r in mail)
    wrong: list[str] = []
    latency: list[float] = []
    for s in sent:
        fwd = forwards.get(s.message_id)
        if s.kind == "new":
            if fwd is None or carried[s.message_id] != 1 or fwd.rcpt_tos[0] not in CSMS:
                wrong.append(f"new thread {s.message_id} not forwarded once to a CSM")
            else:
                latency.append(fwd.at - s.delivered)
        elif s.kind == "customer-reply":
            if fwd is None or fwd.rcpt_tos != [s.expected] or carried[s.message_id] != 1:
                wrong.append(f"customer reply {s.message_id} not forwarded once to {s.expected}")
            else:
                latency.append(fwd.at - s.delivered)
        elif s.kind in ("csm-reply", "auto-reply") and carried[s.message_id]:
            wrong.append(f"{s.kind} {s.message_id} was forwarded")
    technical = [s for s in sent if s.kind == "technical"]
    to_support = [r for r in mail if r.rcpt_tos == [SUPPORT]]
    customers = {s.sender for s in technical}
    notes = [r for r in mail if r.rcpt_tos[0] in customers]
    if len(to_support) != len(technical) or len(notes) != len(technical):
        wrong.append(f"{len(technical)} technical requests: {len(to_support)} handed to "
                     f"Support, {len(notes)} customers told")
    kinds = Counter(s.kind for s in sent)
    results = {
        "messages": len(sent), "replayed_over_s": span, "by_kind": dict(kinds),
        "forward_latency_ms": {"p50": pct(latency, 50) * 1000, "p90": pct(latency, 90) * 1000,
                               "p99": pct(latency, 99) * 1000,
                               "max": max(latency, default=float("nan")) * 1000},
        "misrouted": len(wrong), "examples": wrong[:10], "exit_codes": codes,
        "csms_who_got_threads": len({t.forward.rcpt_tos[0] for t in threads
                                     if t.forward is not None and t.forward.rcpt_tos[0] in CSMS}),
    }
    lat = results["forward_latency_ms"]
    print(f"a day of {len(sent)} messages over {span:.0f} s: " + ", ".join(
        f"{n} {k}" for k, n in sorted(kinds.items())))
    print(f"forward latency p50 {lat['p50']:.0f} ms, p90 {lat['p90']:.0f} ms, "
          f"p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms")
    print(f"{results['csms_who_got_threads']} of {len(CSMS)} CSMs got threads; "
          f"messages not where the rules say: {len(wrong)}")
    for example in wrong[:10]:
        print(f"  {example}")
    return results


if __name__ == "__main__":
    args = [float(a) for a in harness.arguments(sys.argv[1:])]
    sys.exit(main(int(args[0]) if args else 3000, args[1] if len(args) > 1 else 100.0))
