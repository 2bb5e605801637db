#!/usr/bin/env bash
# Runs Beagle or Minimac4 for the rules `beagle` and `minimac4`, so that a tool that cannot take the
# input does not sink the whole run (bash and htslib only: it runs in the tools' conda envs too).
#
#   external_tool.sh METHOD LOG TARGET MIN_SITES TMP_VCF OUT_VCF OUT_TBI -- COMMAND...
#
# COMMAND writes TMP_VCF (bgzipped VCF); on success it is indexed and moved to OUT_VCF / OUT_TBI.
# When the tool cannot run on this input (a target typing fewer than MIN_SITES sites, or the tool
# exits with an error or aborts), OUT_VCF is a placeholder without records whose header line
# `##ragimpute_not_run=<method=...,reason="...">` says why: `ragimpute evaluate` scores it as "not
# run" and `compare` leaves the method out of comparison.tsv with that reason. A job killed from
# outside (SIGKILL/SIGTERM/SIGINT/SIGHUP/SIGXCPU: memory or time limits, Ctrl-C) or a Java
# OutOfMemoryError still fails, so that Snakemake (and SLURM's retries) can run it again with more.
set -uo pipefail
method=$1 log=$2 target=$3 min_sites=$4 tmp=$5 out=$6 tbi=$7
shift 7
[ "${1:-}" = "--" ] && shift
rm -f "$tmp" "$tmp.tbi" "${tmp%.vcf.gz}.log"
: >"$log"

not_run() {
    local reason
    reason=$(printf '%s' "$1" | tr '\t\n"<>' '     ' | cut -c1-300)
    echo "ragimpute: $method cannot run on $target: $reason. It is left out of the comparison" \
        "(comparison.tsv says why); see $log" | tee -a "$log" >&2
    printf '##fileformat=VCFv4.2\n##ragimpute_not_run=<method=%s,reason="%s">\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\n' \
        "$method" "$reason" | bgzip -c >"$tmp" &&
        tabix -f -p vcf "$tmp" && mv "$tmp" "$out" && mv "$tmp.tbi" "$tbi"
}

n_sites=$(bgzip -dc "$target" | grep -vc '^#')
if [ "$n_sites" -lt "$min_sites" ]; then
    not_run "the target types $n_sites site(s) it can take; $method needs at least $min_sites"
    exit $?
fi

echo "ragimpute: running: $*" >>"$log"
# The tool dies with this script where util-linux's setpriv can ask for it (PR_SET_PDEATHSIG): a
# job killed from outside (SIGKILL: no trap runs) otherwise leaves Beagle running on, orphaned.
if command -v setpriv >/dev/null 2>&1 && setpriv --pdeathsig KILL true 2>/dev/null; then
    set -- setpriv --pdeathsig KILL -- "$@"
fi
"$@" >>"$log" 2>&1
rc=$?
# Beagle also writes the log it printed (above) beside its output: once in $log is enough
rm -f "${tmp%.vcf.gz}.log"
if [ "$rc" -eq 0 ]; then
    tabix -f -p vcf "$tmp" && mv "$tmp" "$out" && mv "$tmp.tbi" "$tbi"
    exit $?
fi
case $rc in
129 | 130 | 137 | 143 | 152)
    echo "ragimpute: $method was killed (exit status $rc: signal $((rc - 128))); the job fails so" \
        "that it can be run again" | tee -a "$log" >&2
    exit "$rc"
    ;;
esac
if grep -q 'OutOfMemoryError' "$log"; then
    echo "ragimpute: $method ran out of memory; raise baselines.beagle.mem_mb (the job fails so that" \
        "it can be run again with more)" | tee -a "$log" >&2
    exit "$rc"
fi
rm -f "$tmp" "$tmp.tbi"
# A failure on one of the workflow's own files that is damaged (a truncated reference or target) is
# not the input's fault either: the job fails, naming the file, instead of leaving the tool out.
for arg in "$target" "$@"; do
    f=${arg#*=}
    if [[ $f == *.gz && -f $f ]] && ! bgzip -t "$f" 2>/dev/null; then
        echo "ragimpute: $method failed, and $f is corrupted or truncated (bgzip -t fails): delete" \
            "it and run snakemake again, which makes it anew" | tee -a "$log" >&2
        exit "$rc"
    fi
done
what=$(grep -m1 -E 'Exception|Error|error|Assertion|assert|Abort|abort' "$log" || true)
not_run "$method failed with exit status $rc${what:+: $what}"
