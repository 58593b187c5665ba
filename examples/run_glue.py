"""Compress a pre-trained encoder on a GLUE task with RankDyna, using the PEFT API directly.

    GLUE_DIR=../shared/data/glue python examples/run_glue.py --model PATH --task mrpc --budget 0.5 --output out/mrpc
    python examples/run_glue.py --model PATH --train-file train.csv --validation-file dev.csv --output out/mine

Every GLUE task works: classification (MRPC, SST-2, CoLA, RTE, QNLI, MNLI, QQP) and STS-B
regression. The same job, with progress bars and a summary, is ``rankdyna compress``; this
script shows the few calls it is made of.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from peft import get_peft_model
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

from peft_rankdyna import RankDynaCallback, RankDynaConfig
from peft_rankdyna.jobs.data.files import load_files
from peft_rankdyna.jobs.data.glue import get_task, load_glue
from peft_rankdyna.jobs.data.labelled import TokenizedSplit, compute_metrics
from peft_rankdyna.jobs.length import default_epochs
from peft_rankdyna.loading import load_tokenizer
from peft_rankdyna.jobs.objectives.classification import load_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local pre-trained model folder")
    parser.add_argument("--task", default=None, help="GLUE task name, e.g. mrpc or stsb")
    parser.add_argument("--train-file", default=None, help="your own training data (.csv, .tsv, .jsonl) instead")
    parser.add_argument("--validation-file", default=None, help="your own validation data")
    parser.add_argument("--text-columns", nargs="+", default=None, help="one or two text columns (default: inferred)")
    parser.add_argument("--label-column", default=None, help="label column (default: label)")
    parser.add_argument("--budget", type=float, default=0.5, help="fraction of target-matrix parameters to keep")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--epochs", type=float, default=None,
                        help="default: 6, rankdyna compress's length for one RankDyna round")
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    set_seed(args.seed)

    if args.train_file:  # your own files: columns and labels checked before anything is loaded
        train_split, dev_split, task = load_files(args.train_file, args.validation_file, args.text_columns,
                                                  args.label_column)
    else:
        task = get_task(args.task)
        train_split, dev_split = load_glue(task, "train"), load_glue(task, "dev")
    tokenizer = load_tokenizer(args.model)
    train = TokenizedSplit(tokenizer, train_split, max_length=128, limit=args.max_train_samples)
    dev = TokenizedSplit(tokenizer, dev_split, max_length=128)
    epochs = default_epochs(replaces_two_rounds=True) if args.epochs is None else args.epochs

    # 1. Rewrite the target Linears as SVD factors of their pre-trained weights.
    config = RankDynaConfig(target_budget=args.budget, task_type="SEQ_CLS")
    model = get_peft_model(load_classifier(args.model, task), config)
    model.print_trainable_parameters()

    # 2. Fine-tune; the callback re-estimates importance and re-allocates the budget as training goes.
    trainer = Trainer(
        model=model,
        args=TrainingArguments(args.output, num_train_epochs=epochs, max_steps=args.max_steps,
                               learning_rate=args.lr, per_device_train_batch_size=16, seed=args.seed,
                               report_to=[], use_cpu=not torch.cuda.is_available()),
        train_dataset=train,
        eval_dataset=dev,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda output: compute_metrics(task, output.predictions, output.label_ids),
    )
    RankDynaCallback.attach(trainer)
    trainer.train()

    # 3. Score and save: the adapter loads back with PeftModel.from_pretrained after `import peft_rankdyna`.
    metrics = trainer.evaluate()
    rankdyna = model.base_model
    metrics["target_params_kept"] = rankdyna.kept_params()
    metrics["target_params_dense"] = rankdyna.dense_params()
    model.save_pretrained(os.path.join(args.output, "adapter"))
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
