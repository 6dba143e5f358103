"""Predict the genre of every audio file in a folder with a saved model; write submission.csv.

    python predict.py runs/NAME/model.pt data/test
    python predict.py runs/NAME/model.joblib data/test --sample-submission sample_submission.csv
    python predict.py runs/NAME/model.pt data/test --submit COMPETITION -m "try 2" [--dry-run]

Each file is converted (or its features extracted) exactly as the model's training data was,
with the settings stored in the model; segments vote per clip. Every file gets a row: an
unreadable one gets the training set's most common class, with a warning and a line in
submission_errors.csv. submission.json records what was predicted and its time per clip.
"""
import sys

import common


def build_parser():
    p = common.ArgumentParser(prog="predict.py", description=__doc__)
    p.add_argument("model", help="a run's model.pt, or model.joblib of a scikit-learn baseline")
    p.add_argument("audio_dir", help="flat folder of audio files (e.g. a Kaggle test set)")
    p.add_argument("--output", help="CSV to write (default: submission.csv beside the model)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--workers", type=common.number(int, minimum=1), default=common.default_workers(),
                   help="processes that decode the audio (default: the %(default)s cores)")
    common.add_submission_args(p)
    return p


@common.user_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    common.list_audio(args.audio_dir)  # before loading anything
    if args.sample_submission:
        common.read_sample_submission(args.sample_submission)
    common.predict_and_submit(args.model, args.audio_dir, output=args.output,
                              device=common.pick_device(args.device), workers=args.workers,
                              id_col=args.id_col, label_col=args.label_col,
                              sample_submission=args.sample_submission, submit=args.submit,
                              message=args.message, dry_run=args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
