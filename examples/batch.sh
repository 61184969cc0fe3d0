#!/usr/bin/env bash
# Loop mrsynth over subject folders, the way a hospital data team would in a shell script.
#
#   examples/batch.sh SUBJECTS_DIR OUT_DIR
#
# SUBJECTS_DIR holds one folder per subject (plain folders with T1.nii.gz, T2.nii.gz ..., BraTS
# case folders, or BIDS sub-*/anat). For each subject with a T1 and a T2 this synthesizes FLAIR
# (`mrsynth synthesize`), and where the subject also has an acquired FLAIR it scores the synthetic
# one against it (`mrsynth evaluate --csv`), collecting one CSV. One failing subject does not stop
# the others; the script exits 1 if any failed. Reruns skip subjects whose output exists.
#
# `mrsynth batch SUBJECTS_DIR OUT_DIR --target flair` does the same in one process (the model is
# loaded once, outputs as BIDS derivatives, a run report); this script shows the plain-shell way.
set -u
subjects_dir=${1:?usage: batch.sh SUBJECTS_DIR OUT_DIR}
out_dir=${2:?usage: batch.sh SUBJECTS_DIR OUT_DIR}
mkdir -p "$out_dir"
csv="$out_dir/metrics.csv"
failed=0
first=1
for dir in "$subjects_dir"/*/; do
    id=$(basename "$dir")
    t1=$(ls "$dir"*[Tt]1*.nii* 2>/dev/null | grep -iv -e post -e t1c -e ce- -e mask | head -n 1)
    t2=$(ls "$dir"*[Tt]2*.nii* 2>/dev/null | grep -iv -e flair -e t2f -e mask | head -n 1)
    flair=$(ls "$dir"*[Ff][Ll][Aa][Ii][Rr]*.nii* "$dir"*t2f*.nii* 2>/dev/null | head -n 1)
    if [ -z "$t1" ] || [ -z "$t2" ]; then
        echo "$id: skipped (needs a T1 and a T2)" >&2
        continue
    fi
    synth="$out_dir/$id/FLAIR_synth.nii.gz"
    if [ ! -e "$synth" ]; then
        mkdir -p "$out_dir/$id"
        if ! mrsynth synthesize --in "t1=$t1" "t2=$t2" --target flair --out "$synth" 2>"$out_dir/$id/log.txt"; then
            echo "$id: FAILED: $(tail -n 1 "$out_dir/$id/log.txt")" >&2
            failed=1
            continue
        fi
    fi
    if [ -n "$flair" ]; then
        if result=$(mrsynth evaluate --pred "$synth" --ref "$flair" --csv 2>>"$out_dir/$id/log.txt"); then
            if [ $first -eq 1 ]; then echo "subject,$(echo "$result" | head -n 1)" >"$csv"; first=0; fi
            echo "$id,$(echo "$result" | tail -n 1)" >>"$csv"
        else
            echo "$id: scoring FAILED: $(tail -n 1 "$out_dir/$id/log.txt")" >&2
            failed=1
            continue
        fi
    fi
    echo "$id: ok"
done
[ $first -eq 0 ] && echo "metrics: $csv"
exit $failed
