#!/usr/bin/env bash
# PostgreSQL unix socket dirs (ROOT/<ip>-<port>: the sitter's default place, ROOT being
# /run/manatee) that no live PostgreSQL holds, one path a line: what a node leaves behind when
# nobody removed its dir after its PostgreSQL was killed (a stale .s.PGSQL.<port> socket and
# .lock) or stopped (an empty dir). Used by scripts/check-leftovers.sh.
#   scripts/stale-socket-dirs.sh [ROOT]
# The rule of testbed/manatee_testbed/sockdirs.py (the test bed's teardown): stale when the dir
# holds only sockets, each with its lock, and locks whose first line is a pid that is gone, a
# zombie or not PostgreSQL (reused); an empty dir is stale. Kept (not printed): a lock of a live
# PostgreSQL, a lock with no pid (being written), a socket without its lock, any other file, a
# dir this user cannot read.
set -u
shopt -s nullglob dotglob
root=${1:-/run/manatee}
pid_limit=4194304  # the kernel's largest pid_max: a larger "pid" is not one

# $1 is a live PostgreSQL (or a live process this user may not look at).
holds() {
    local st exe
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [ "${st%% *}" = Z ] && return 1
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || { [ "$(id -u)" -ne 0 ] && [ -e "/proc/$1" ]; return; }
    case ${exe##*/} in postgres*|postmaster*) return 0 ;; esac
    return 1
}

stale() {
    local d=$1 f name line pid
    [ -r "$d" ] && [ -x "$d" ] || return 1
    for f in "$d"/*; do
        name=${f##*/}
        if [[ $name =~ ^\.s\.PGSQL\.[0-9]+$ ]]; then
            [ -e "$f.lock" ] || [ -L "$f.lock" ] || return 1
        elif [[ $name =~ ^\.s\.PGSQL\.[0-9]+\.lock$ ]]; then
            line=
            IFS= read -r line < "$f" 2>/dev/null
            [[ $line =~ ^[[:space:]]*0*([1-9][0-9]{0,6})[[:space:]]*$ ]] || return 1
            pid=${BASH_REMATCH[1]}
            [ "$pid" -le "$pid_limit" ] || return 1
            holds "$pid" && return 1
        else
            return 1
        fi
    done
    return 0
}

for d in "$root"/*; do
    [[ ${d##*/} =~ ^[0-9A-Fa-f.:]+-[0-9]+$ ]] && [ -d "$d" ] && [ ! -L "$d" ] || continue
    stale "$d" && printf '%s\n' "$d"
done
exit 0
