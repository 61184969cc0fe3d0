#!/usr/bin/env bash
# Loop mrsynth over subject folders, the way a hospital data team would in a shell script.
#
#   examples/batch.sh SUBJECTS_DIR OUT_DIR
#
# SUBJECTS_DIR holds one folder per subject (BIDS sub-*/anat, BraTS case folders or plain folders
# with T1.nii.gz, T2.nii.gz, FLAIR.nii.gz ...). For each subject this validates the inputs
# (`mrsynth inspect`) and scores T2 against FLAIR (`mrsynth evaluate --csv`), collecting one CSV.
# One failing subject does not stop the others; the script exits 1 if any failed.
# (When `mrsynth synthesize` lands, the loop body becomes:
#    mrsynth synthesize --in "$dir"/T1.nii.gz "$dir"/T2.nii.gz --target flair --out "$out/$id/FLAIR_synth.nii.gz")
set -u
subjects_dir=${1:?usage: batch.sh SUBJECTS_DIR OUT_DIR}
out_dir=${2:?usage: batch.sh SUBJECTS_DIR OUT_DIR}
mkdir -p "$out_dir"
csv="$out_dir/metrics.csv"
failed=0
first=1
for dir in "$subjects_dir"/*/; do
    id=$(basename "$dir")
    t2=$(ls "$dir"/*[Tt]2*.nii* 2>/dev/null | grep -iv flair | head -n 1)
    flair=$(ls "$dir"/*[Ff][Ll][Aa][Ii][Rr]*.nii* 2>/dev/null | head -n 1)
    if [ -z "$t2" ] || [ -z "$flair" ]; then
        echo "$id: skipped (needs a T2 and a FLAIR)" >&2
        continue
    fi
    if ! mrsynth inspect "$dir" >"$out_dir/$id.inspect.txt" 2>"$out_dir/$id.log"; then
        echo "$id: FAILED: $(cat "$out_dir/$id.log")" >&2
        failed=1
        continue
    fi
    if result=$(mrsynth evaluate --ref "$t2" --pred "$flair" --csv 2>>"$out_dir/$id.log"); then
        if [ $first -eq 1 ]; then echo "subject,$(echo "$result" | head -n 1)" >"$csv"; first=0; fi
        echo "$id,$(echo "$result" | tail -n 1)" >>"$csv"
        echo "$id: ok"
    else
        echo "$id: FAILED: $(tail -n 1 "$out_dir/$id.log")" >&2
        failed=1
    fi
done
[ $first -eq 0 ] && echo "metrics: $csv"
exit $failed
