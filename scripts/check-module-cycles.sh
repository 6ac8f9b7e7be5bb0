#!/usr/bin/env bash
# Fails when a crate of the workspace has a cycle among its concerns: a top-level module (a
# folder, or a file at the crate's root) a uses b and b, through any path, uses a. Concerns that
# depend on each other can be neither understood, tested nor moved apart; docs/architecture.md
# says which way each crate's concerns depend. Inside one folder, files that extend one type
# (an `impl` block per concern, a `mod.rs` re-exporting them) are one concern and not judged.
#
# cargo-modules draws each crate's module graph; each module is folded into its top-level
# module (the crate root, which only declares and re-exports, is left out), and graphviz's
# `acyclic` judges the folded graph, `sccmap` names the modules of each cycle. cargo-modules'
# own `--acyclic` is not used: it judges the graph of every item, where a type and a method
# naming that type already make a cycle, so it fails every crate. The graph is what
# cargo-modules sees: `use` imports and the types in items' signatures; a path written out in
# a function body is not an edge.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

scripts/install-cargo-modules.sh

# cargo-modules runs as a cargo subcommand.
export PATH="$CARGO_MODULES_ROOT/bin:$PATH"
failed=()
for crate in kv-wire kv-core kv-reader kv-writer kv-client kv-testkit; do
    # Items and other crates left out: their edges are folded into the modules that hold them.
    # "owns" edges left out: a module declaring a child is not a dependency on it.
    graph=$(cargo modules dependencies --package "$crate" --lib --no-sysroot --no-externs \
        --no-fns --no-types --no-traits --no-owns --layout dot) \
        || die "cargo-modules could not read $crate"
    # `"a::b::c" -> "a::d"` edges, folded to `"a::b" -> "a::d"`; self-loops and the root's
    # own edges dropped.
    graph=$(awk -v crate="${crate//-/_}" '
        /->/ {
            split($0, q, "\"")
            from = q[2]; to = q[4]
            if (from == crate) next
            n = split(from, f, "::"); from = (n > 1) ? f[1] "::" f[2] : from
            n = split(to, t, "::"); to = (n > 1) ? t[1] "::" t[2] : to
            if (from != to) edges["\"" from "\" -> \"" to "\""] = 1
        }
        END { print "digraph {"; for (e in edges) print "  " e ";"; print "}" }
    ' <<<"$graph")
    status=0
    acyclic -n <<<"$graph" || status=$?
    case $status in
        0) log "$crate: no module dependency cycle" ;;
        1)
            log "$crate: module dependency cycles, each with its edges:"
            sccmap <<<"$graph" 2>/dev/null | gvpr '
                BEG_G { if ($G.name != "scc_map") printf("  cycle:\n") }
                E [$G.name != "scc_map"] { printf("    %s -> %s\n", $.tail.name, $.head.name) }
            ' >&2
            failed+=("$crate")
            ;;
        *) die "graphviz's acyclic could not read the module graph of $crate" ;;
    esac
done
[ ${#failed[@]} -eq 0 ] || die "module dependency cycles in ${failed[*]}"
