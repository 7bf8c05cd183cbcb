#!/usr/bin/env python3
"""Group `perf script` samples of the switch by part of the flow (see run.sh).

where.py PERF_SCRIPT_OUTPUT TX_PER_S SECONDS HZ

Each sample goes to the first category whose module path names a frame, from the leaf
up; samples of the audit threads go to those threads. Prints a markdown table of µs of
CPU per transaction (perf sampling sees less than /proc: read shares, not sums).
"""
import sys, re, collections
# Whole tasks of the group (group.sh): a sample with one of these frames anywhere in its
# stack is theirs, whatever the leaf (their decode, their NATS client, their allocations).
owners = [
 ('cluster: following the other instances\' records (read, decode, apply)', r'^(<)?switchyard_cluster::follower'),
 ('cluster: audit shipper and merchant feed (read the log, publish, acks)', r'^(<)?switchyard_cluster::(AuditShipper|feed|Tail)'),
 ('cluster: shared state (claims, homes, buckets)', r'^(<)?switchyard_cluster::(shared|homes)'),
]
cats = [
 ('shared state on the request path (router::shared)', r'^(<)?switchyard_router::shared'),
 ('NATS client (async-nats) outside the tasks above', r'^(<)?async_nats'),
 ('audit: building records (protect, MessagePack, PairRecord)', r'^(<)?(switchyard_audit::record|switchyard_audit::payload|rmp|switchyard_audit::keys)'),
 ('audit: append (digest, queue) on the runtime', r'^(<)?switchyard_audit::log::AuditLog'),
 ('integrity indexes (duplicates, originals, approvals)', r'^(<)?switchyard_router::integrity'),
 ('reversal basis / SAF', r'^(<)?switchyard_router::saf'),
 ('codec (decode, respond, encode)', r'^(<)?switchyard_iso8583'),
 ('stages: forwarding (in-flight record, link call)', r'^(<)?switchyard_router::stages::forwarding'),
 ('stages: record pair', r'^(<)?switchyard_router::stages::record'),
 ('stages: other stages', r'^(<)?switchyard_router::stages::(?!run)'),
 ('stages::run (stage bodies inlined)', r'^(<)?switchyard_router::stages::run'),
 ('router flow and metrics', r'^(<)?(switchyard_router::(flow|metrics|routes|transaction)|prometheus)'),
 ('issuer link (mux::link: match, send, read)', r'^(<)?switchyard_mux::link'),
 ('terminal side (acceptor, frames, writer)', r'^(<)?switchyard_mux::(acceptor|io|framing)'),
 ('sockets through tokio (read, write syscalls and the TCP stack)', r'^(<)?tokio::(net|io)|^(<)?<tokio::(net|io)|mio::'),
 ('tokio runtime (scheduling, wakeups, timers)', r'^(<)?tokio::'),
]
samples=[]; cur=None
for line in open(sys.argv[1], errors='replace'):
    if not line.strip():
        if cur: samples.append(cur); cur=None
        continue
    if line[0] not in ' \t': cur={'c':line.split()[0],'f':[]}; continue
    parts=line.strip().split(' ',1)
    if len(parts)==2 and cur is not None:
        sym,_,dso=parts[1].rpartition(' (')
        sym=re.sub(r'\+0x[0-9a-f]+$','',sym)
        cur['f'].append((sym,dso.rstrip(')')))
if cur: samples.append(cur)
res=collections.Counter(); kern=collections.Counter()
for s in samples:
    f=s['f']; k = bool(f) and 'kernel' in f[0][1]
    cat=None
    if s['c'].startswith('audit-writer'): cat='audit writer thread (encode, CRC, chain, write, fdatasync)'
    elif s['c'].startswith('audit-acker'): cat='audit acker thread (waking waiters)'
    elif s['c'].startswith('audit'): cat='audit other threads (zero-filling)'
    else:
        cat=next((n for n,p in owners if any(re.search(p,sym) for sym,_ in f)), None)
    if cat is None and not s['c'].startswith('audit'):
        for sym,dso in f:
            for n,p in cats:
                if re.search(p,sym): cat=n; break
            if cat: break
    cat=cat or ('kernel, no user frame (interrupts, idle paths)' if k else 'other (libc, allocator outside a frame)')
    res[cat]+=1; kern[cat]+=k
tot=len(samples); tps=float(sys.argv[2]); secs=float(sys.argv[3]); hz=float(sys.argv[4])
per=tot/hz/(tps*secs)*1e6
print('%d samples: %.1f µs of switch CPU per transaction by perf sampling'%(tot,per))
print('| where | µs/tx | share | of it in the kernel |'); print('|---|---|---|---|')
for kk,v in res.most_common(): print('| %s | %.1f | %.0f%% | %.0f%% |'%(kk, v/tot*per, 100*v/tot, 100*kern[kk]/v))
