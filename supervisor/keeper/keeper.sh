# The keeper's program in POSIX sh, run as `sh keeper.sh supervisor-keeper MARK` with
# PATH alone in its environment (docs/operations.md, "The no-orphans keeper").
#
# The same program as program.py (the fallback where there is no /bin/sh), at a fraction
# of its memory: a shell is ~1 MiB where a Python interpreter is ~9 MiB. It reads lines
# from stdin until end of file:
#
#   +PGID BY     a process group was born; its leader's pid is PGID and it had started
#                by BY (clock ticks on the clock of field 22 of /proc/PID/stat), read by
#                the supervisor right after the spawn, while the leader was its unreaped
#                child: a process that gets the number once it is reaped starts after BY
#   +PGID        the same, BY unknown: never killed by number (the mark finds it)
#   -PGID        the group is gone; forget it (its number may be reused)
#   q            a graceful exit: kill nothing
#
# At end of file (the supervisor died, however) each registered group is SIGKILLed, but
# only while its leader is still the process registered: alive (not a zombie) and started
# by BY. A group whose leader is gone may have been emptied and its number reused, and is
# never killed by number. Then every process whose environment holds
# SUPERVISOR_KEEPER_MARK=MARK is SIGKILLed, rescanning until three scans in a row find
# nothing (a child between fork and exec shows no environment of its own yet).

trap '' TERM INT HUP PIPE
set -f # no globbing of what we read
mark=$2

while IFS= read -r line; do
    case $line in
    q) exit 0 ;;
    +*)
        set -- ${line#+}
        case ${1:-x}${2:-0} in *[!0-9]*) continue ;; esac
        eval "g_$1=${2:-u}"
        ;;
    -*)
        pgid=${line#-}
        case ${pgid:-x} in *[!0-9]*) continue ;; esac
        unset "g_$pgid"
        ;;
    esac
done

set +f
for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    eval "by=\${g_$pid:-u}"
    [ "$by" = u ] && continue
    { read -r stat <"$dir/stat"; } 2>/dev/null || continue
    set -f
    set -- ${stat##*) }
    set +f
    # after the command's name: $1 is the state, ${20} the start time
    if [ "$1" != Z ] && [ "$1" != X ] && [ "${20}" -le "$by" ]; then
        kill -s KILL -- "-$pid" 2>/dev/null
    fi
done

needle="SUPERVISOR_KEEPER_MARK=$mark"
quiet=0
while [ "$quiet" -lt 3 ]; do
    found=
    for file in $(grep -lsF -e "$needle" /proc/[0-9]*/environ 2>/dev/null); do
        pid=${file#/proc/}
        found="$found ${pid%/environ}"
    done
    if [ -n "$found" ]; then
        set -f
        kill -s KILL $found 2>/dev/null
        set +f
        quiet=0
    else
        quiet=$((quiet + 1))
    fi
    sleep 0.05 2>/dev/null || sleep 1
done
exit 0
