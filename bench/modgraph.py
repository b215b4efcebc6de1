#!/usr/bin/env python3
"""Module import graph of src/: arrows from a file to the files it names through `crate::`."""
import os, re, subprocess, sys, collections
rev = sys.argv[1] if len(sys.argv) > 1 else None
root = 'src'
def files():
    if rev:
        out = subprocess.check_output(['git','ls-tree','-r','--name-only',rev,root]).decode().split()
        return [f for f in out if f.endswith('.rs')]
    res=[]
    for d,_,fs in os.walk(root):
        res += [os.path.join(d,f) for f in fs if f.endswith('.rs')]
    return res
def read(f):
    if rev: return subprocess.check_output(['git','show',f'{rev}:{f}']).decode()
    return open(f).read()
fs = sorted(files())
def modpath(f):
    p = f[len(root)+1:-3].split('/')
    if p[-1] in ('mod','lib'): p = p[:-1]
    return tuple(p)
mods = {modpath(f): f for f in fs}
def resolve(path):
    # longest prefix that is a module
    for i in range(len(path),0,-1):
        if tuple(path[:i]) in mods: return mods[tuple(path[:i])]
    return None
edges = collections.defaultdict(set)
lines = {}
for f in fs:
    src = read(f)
    lines[f] = src.count('\n')
    # strip comments
    code = re.sub(r'//[^\n]*', '', src)
    me = modpath(f)
    for m in re.finditer(r'crate::((?:\w+::)*\w+)', code):
        t = resolve(m.group(1).split('::'))
        if t and t != f: edges[f].add(t)
    for m in re.finditer(r'use crate::\{([^;]*)\};', code):
        for item in re.split(r'[,\s]+', m.group(1)):
            item = item.strip('{} ')
            if not item: continue
            t = resolve(item.split('::'))
            if t and t != f: edges[f].add(t)
    if f.endswith('mod.rs') or f.endswith('lib.rs'):
        for m in re.finditer(r'(?<![:\w])(\w+)::', code):
            t = mods.get(me + (m.group(1),))
            if t and t != f: edges[f].add(t)
    for m in re.finditer(r'(?:use )?super::((?:\w+::)*\w+)', code):
        base = list(me[:-1]) if not f.endswith('mod.rs') else list(me[:-1])
        t = resolve(base + m.group(1).split('::'))
        if t and t != f: edges[f].add(t)
# re-exports at lib.rs are the facade: drop lib.rs edges (it names everything)
lib = 'src/lib.rs'
# SCCs (Tarjan)
index = {}; low = {}; stack = []; on = set(); sccs = []; i = [0]
sys.setrecursionlimit(10000)
def strong(v):
    index[v] = low[v] = i[0]; i[0]+=1; stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w == lib: continue
        if w not in index: strong(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        c = []
        while True:
            w = stack.pop(); on.discard(w); c.append(w)
            if w == v: break
        sccs.append(sorted(c))
for v in fs:
    if v == lib: continue
    if v not in index: strong(v)
cyc = [c for c in sccs if len(c) > 1]
n_edges = sum(len([t for t in ts if t != lib]) for f, ts in edges.items() if f != lib)
# arrows "back up": inside a cycle, count edges within the SCC minus a spanning order... report edges inside cycles
inside = sum(1 for c in cyc for f in c for t in edges.get(f, ()) if t in c)
print(f"files: {len(fs)}  lines: {sum(lines.values())}  arrows (lib.rs excluded): {n_edges}")
print(f"cycles (strongly connected sets of more than one file): {len(cyc)}; arrows inside them: {inside}")
for c in sorted(cyc, key=len, reverse=True):
    print(f"  {len(c)} files: {' '.join(x[4:] for x in c)}")
print("largest files:", ', '.join(f"{f[4:]} {n}" for f, n in sorted(lines.items(), key=lambda x: -x[1])[:8]))
if '-v' in sys.argv:
    for c in cyc:
        for f in c:
            print(f"  {f[4:]:22} -> {' '.join(sorted(t[4:] for t in edges.get(f,()) if t in c))}")
