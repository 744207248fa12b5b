"""The commands about threads and failed sends: threads, thread, reassign, failed."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from csm_router.cli.shared import _runtime, for_json, out
from csm_router.config.values import language_name
from csm_router.core.threads import format_ref, parse_ref
from csm_router.lead import poolstatus
from csm_router.mail.outbound import event_line, when
from csm_router.state import pool
from csm_router.state.store import owed_ids
from csm_router.terminal import inert


def cmd_threads(args: argparse.Namespace) -> int:
    rt = _runtime()
    threads = poolstatus.recent_threads(rt.store, args.limit)
    if args.json:
        print(json.dumps([for_json(t) for t in threads], indent=2))
        return 0
    table = Table(title="Threads, newest first")
    for column in ("ref", "customer", "subject", "owner", "state", "due"):
        table.add_column(column)
    for t in threads:
        due = when(t.get("due"))
        # Customer text, inert: no markup, no control characters (see terminal.py).
        table.add_row(format_ref(int(t["ref"])), inert(t.get("customer", "")),
                      inert(t.get("subject", "")), inert(t.get("owner", "") or "-"),
                      inert(t.get("state", "")), due)
    out.print(table)
    return 0



def _ref(text: str) -> int:
    ref = parse_ref(text.strip().strip("[]"))  # the subject's `[CS-1042]`, pasted whole
    if ref is None:
        raise pool.PoolError(f"{text!r} is not a thread reference like CS-1042")
    return ref


def cmd_thread(args: argparse.Namespace) -> int:
    rt = _runtime()
    ref = _ref(args.ref)
    thread = rt.store.thread(ref)
    if not thread:
        raise pool.PoolError(f"no thread {format_ref(ref)}")
    out.print(f"[bold]{inert(f'[{format_ref(ref)}]')}[/] {inert(thread.get('subject', ''))}")
    for name in ("customer", "account", "owner", "state"):
        out.print(f"  {name:<15} {inert(thread.get(name) or '-')}")
    if thread.get("language"):
        out.print(f"  {'language':<15} {inert(language_name(thread['language']))}")
    if thread.get("covering_for"):
        out.print(f"  {'covering for':<15} {inert(thread['covering_for'])} (back to them "
                  "on their return)")
    out.print(f"  {'created':<15} {when(thread.get('created'))}")
    out.print(f"  {'due':<15} {when(thread.get('due'))}")
    out.print(f"  {'first response':<15} {when(thread.get('first_response'))}")
    out.print("history:")
    for e in rt.store.events(ref):
        out.print(f"  {inert(event_line(e))}  {inert(e.get('msg', ''))}")
    return 0


def cmd_reassign(args: argparse.Namespace) -> int:
    rt = _runtime()
    ref = _ref(args.ref)
    address = pool.require_member(rt.store, args.address)
    result = rt.store.reassign(ref, address, "reassigned by an admin")
    if result.get("error"):
        raise pool.PoolError(f"{format_ref(ref)}: {result['error']}")
    if result.get("unchanged"):
        out.print(f"{format_ref(ref)} is already with {address}: nothing to do")
        return 0
    rt.outbox.offer(owed_ids(result.get("owed")))
    out.print(f"{format_ref(ref)}: {result.get('previous') or 'nobody'} -> {address}")
    return 0


def cmd_failed(args: argparse.Namespace) -> int:
    rt = _runtime()
    outbox = rt.outbox
    if args.action == "list":
        letters = outbox.dead_letters()
        if args.json:
            print(json.dumps([for_json({"id": d.id, "kind": d.kind, "args": d.args,
                                        "attempts": d.attempts, "error": d.error,
                                        "dead_at": d.dead_at}) for d in letters], indent=2))
            return 0
        table = Table(title="Sends that failed for good")
        for column in ("id", "what", "failed at", "attempts", "error"):
            table.add_column(column, no_wrap=column == "id")
        for d in letters:
            table.add_row(inert(d.id), inert(_describe(d.kind, d.args)), when(d.dead_at),
                          str(d.attempts), inert(d.error))
        out.print(table if letters else "no failed sends")
        return 0
    if not args.id:
        raise pool.PoolError(f"`failed {args.action}` needs an id: see `csm-router failed list`")
    letter = outbox.dead_letter(args.id)
    if letter is None:
        raise pool.PoolError(f"{args.id}: no such failed send (see `csm-router failed list`)")
    if args.action == "show":
        out.print(f"[bold]{inert(letter.id)}[/]  {inert(_describe(letter.kind, letter.args))}")
        out.print(f"  {'failed at':<10} {when(letter.dead_at)} after {letter.attempts} attempts")
        out.print(f"  {'error':<10} {inert(letter.error)}")
        out.print(f"  {'args':<10} {inert(json.dumps(letter.args))}")
    elif args.action == "retry":
        outbox.revive(letter.id)
        out.print(f"{letter.id}: queued again with a fresh set of retries")
    else:
        outbox.drop(letter.id)
        out.print(f"{letter.id}: dropped")
    return 0


def _describe(kind: str, args: dict[str, Any]) -> str:
    ref = f"{format_ref(int(args['ref']))} " if args.get("ref") else ""
    if kind == "deliver":
        return f"forward of {args.get('msgkey', '')[:12]} to {args.get('owner')}"
    if kind == "support":
        return f"{ref}handoff to Support"
    return f"{ref}{kind} notice".strip()
