# Shared by the web benchmarks (bench-failover.sh, bench-failback.sh); sourced, not run. Needs ROOT,
# LABSH and LAB_WEB set.
#   now_ms, lab ARGS...        clock in ms; scripts/lab.sh, quiet
#   bench_web_init             after `eval "$(lab env)"`: HOLDER, and WEB, the command prefix that runs
#                              a command in the web host; both exec it (or, for uml, are its client,
#                              which forwards SIGTERM), so $! of `"${WEB[@]}" CMD &` is what to kill
#   web_mountinfo, mount_src   the web host's mountinfo, and the source at /mnt/nfs ("" if none),
#                              never touching the mount
#   wait_src SOURCE SECONDS    until /mnt/nfs is served from SOURCE (1 after the deadline)

now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }
lab() { LAB_QUIET=1 bash "$LABSH" "$@"; }

bench_web_init() {
    HOLDER=$(cut -d' ' -f1 "$LAB_RUN/web/holder.pid")
    if [[ $LAB_WEB == uml ]]; then WEB=("$ROOT/scripts/lab/uml-exec" "$LAB_WEB_SPOOL"); else WEB=(nsenter -t "$HOLDER" -m -n --); fi
}

web_mountinfo() {
    if [[ $LAB_WEB == uml ]]; then
        # rewritten in place by the guest's init every ~100 ms; complete when it ends with "#end"
        local t
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            t=$(cat "$LAB_WEB_SPOOL/mountinfo" 2>/dev/null) || true
            [[ $t == *"#end" ]] && { printf '%s\n' "$t"; return; }
            sleep 0.01
        done
    else
        cat "/proc/$HOLDER/mountinfo"
    fi
}

mount_src() { web_mountinfo | awk '$5=="/mnt/nfs"{for(i=7;i<=NF;i++) if($i=="-"){s=$(i+2)}} END{print s}'; }

wait_src() {
    local end=$(( $(now_ms) + $2 * 1000 ))
    until [[ $(mount_src) == "$1" ]]; do
        (( $(now_ms) < end )) || return 1
        sleep 0.02
    done
}
