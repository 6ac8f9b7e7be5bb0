#!/usr/bin/env bash
# Fails when a crate of the workspace has a cycle among its modules: module a uses module b
# and b, through any path, uses a. Modules that depend on each other can be neither understood,
# tested nor moved apart; docs/architecture.md says which way each crate's modules depend.
#
# cargo-modules draws each crate's module graph; graphviz's `acyclic` judges it and `sccmap`
# names the modules of each cycle. cargo-modules' own `--acyclic` is not used: it judges the
# graph of every item, where a type and a method naming that type already make a cycle, so it
# fails every crate. The graph is what cargo-modules sees: `use` imports and the types in
# items' signatures; a path written out in a function body is not an edge.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

scripts/install-cargo-modules.sh

# cargo-modules runs as a cargo subcommand.
export PATH="$CARGO_MODULES_ROOT/bin:$PATH"
failed=()
for crate in kv-core kv-reader kv-writer kv-testkit; do
    # Items and other crates left out: their edges are folded into the modules that hold them.
    # "owns" edges left out: a module declaring a child is not a dependency on it.
    graph=$(cargo modules dependencies --package "$crate" --lib --no-sysroot --no-externs \
        --no-fns --no-types --no-traits --no-owns --layout dot) \
        || die "cargo-modules could not read $crate"
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
