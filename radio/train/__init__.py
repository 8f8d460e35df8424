"""The training jobs: ``radio train`` (RADIO: G + D, frozen VGG19 and S) and ``radio train-sync`` (S).

    config.py        TrainConfig (model / data / loss / optim / run / sync_pretrain), YAML + --set
    data.py          ShardStream: seeded, resumable samples from the Parquet shards, split over
                     ranks and DataLoader workers
    build.py         device, models, optimisers, frozen loss networks, resume
    steps.py         one micro-step: D loss (+ lazy R1), G loss, backward; EMA
    trainer.py       train(): the loop, progress, TensorBoard, checkpoints, SIGTERM
    sync_trainer.py  train_sync(): S pretraining
    checkpoint.py    atomic checkpoints, radio.pt / sync.pt exports, loaders for other jobs
    dist.py          torchrun helpers, no-ops in one process
    logger.py        progress lines and TensorBoard
    cli.py           parse -> build -> train (the `radio train|train-sync` entry)

Losses live in ``radio.losses``.
"""
