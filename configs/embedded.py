"""Default: the CPU-scale experiment on the embedded dataset.

    python -m kt_transfer.main --mode=AnB --n=4

Generates the embedded dataset once (100 classes, 50 per half, 30 training images a
class), trains baseA, then A4B: the paper's 8-layer network at width 0.125 on 71x71 crops
(Caffe's pooling keeps a 2x2 pool5 map, as 227 px keeps 6x6), with the paper's solver
(SGD, momentum 0.9, step schedule, weight decay 5e-4, bias lr x2) for 2,000 steps of 64
images. About 2 minutes on 2 CPU cores; A4B reaches far above the 2% chance level.

The bases are converged at this budget: twice the steps (schedule stretched) gains
under 1 point top-1 on average over the four bases of the figure grid
(tools/check_convergence.py; README, "Convergence"). That is what the small training
set, the width and no dropout buy: with dropout, or 100 images a class, or width 0.25,
twice the budget still gained up to 10 points.

Departures from the paper's protocol, each for CPU scale (README lists them with their
costs): width 0.125, 80/71 px instead of 256/227, no dropout, 30 training images a class,
He init and inputs scaled by 1/64, a 100-step lr warmup, per-channel mean (not the mean
image), fc8 with one output per class of the half, batch 64, 2,000 steps with the lr step
at 1,500 (the paper: 450,000 and 100,000).
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.mode = "AnB"
    config.n = 4
    config.workdir = "workdir"
    config.split = "random0"
    # An exported base network (a .keras file or SavedModel directory) to copy layers from
    # instead of the workdir's own baseA/baseB; checked for architecture match.
    config.base_model = ""
    config.verbose = 1  # Keras verbosity: 1 = progress bars, 2 = one line per epoch

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "embedded"  # embedded | folder | tfds
    # folder: the images; tfds: TFDS's data_dir (default ~/tensorflow_datasets);
    # embedded: where it is generated (default $KT_TRANSFER_DATA_DIR or ~/.cache/kt_transfer).
    config.dataset.data_dir = ""
    config.dataset.tfds_name = ""  # tfds: imagenet2012, cifar100, imagenette, ...
    config.dataset.tfds_manual_dir = (
        ""  # imagenet2012's tar files; default <data_dir>/downloads/manual
    )
    config.dataset.tfds_val_split = ""  # default: validation, or test where there is none
    config.dataset.resize_size = 80  # the paper's 256, scaled
    # "fixed": subtract mean_rgb; "computed": the per-channel mean of the base half's
    # training images; "base_image": their per-pixel mean image (the paper's). Computed
    # once (over mean_images images), cached under the workdir; a transfer network
    # inherits its base's.
    config.dataset.mean = "fixed"
    config.dataset.mean_rgb = (96.0, 96.0, 96.0)  # subtracted per channel (Caffe-style, 0..255)
    config.dataset.mean_images = 5000
    # A half's images that fit this budget (decoded at resize_size: the default's halves
    # take 29 MB to train, 38 MB to validate) are decoded once per process and kept in
    # memory; larger ones (ImageNet) are decoded on the fly each pass. 0: always on the fly.
    config.dataset.decoded_cache_mb = 1024
    config.dataset.deterministic = False  # True: same order and crops every time (slower)
    config.dataset.scale = 1 / 64  # (pixel - mean) * scale; the paper uses 1 (see model.init)
    config.dataset.embedded = ml_collections.ConfigDict()
    config.dataset.embedded.num_classes = 100
    # 30 training images a class (1,500 a half): small enough that a base converges in
    # the grid's 2,000 steps (100 a class gained 4-9 points from twice the budget).
    config.dataset.embedded.train_per_class = 30
    config.dataset.embedded.val_per_class = 40
    config.dataset.embedded.image_size = 80  # = resize_size: crops decode alone
    config.dataset.embedded.seed = 0
    config.dataset.embedded.first_class = 0  # draw classes first_class.. of the generator's

    # Between two datasets: the bases' source task. Empty name: transfer between the
    # halves of `dataset` (the paper's). Set: baseA trains on this dataset's classes,
    # baseB and every transfer on `dataset`'s, under --config.split=cross (configs/
    # cross_dataset.py); the pipeline settings above (resize, mean, scale) serve both.
    config.source_dataset = ml_collections.ConfigDict()
    config.source_dataset.name = ""  # "" | embedded | folder | tfds
    config.source_dataset.data_dir = ""
    config.source_dataset.tfds_name = ""
    config.source_dataset.tfds_manual_dir = ""
    config.source_dataset.tfds_val_split = ""
    config.source_dataset.embedded = ml_collections.ConfigDict(config.dataset.embedded.to_dict())

    config.distribute = ml_collections.ConfigDict()
    config.distribute.strategy = "auto"  # auto | mirrored | multi_worker | one_device
    config.distribute.logical_cpus = 0  # >1: split the CPU into devices (mirroring without GPUs)

    config.model = ml_collections.ConfigDict()
    config.model.input_size = 71  # the paper's 227, scaled; pool5 2x2 (227 px: 6x6)
    config.model.width = 0.125
    # The paper's fc6/fc7 dropout is 0.5. At CPU scale it keeps the bases from converging
    # (twice the budget gained up to 5 points with it, under 1 without): README, "Convergence".
    config.model.dropout = 0.0
    # fc8's outputs: "half" (one per class of the half) or "all" (one per class of the
    # dataset, as the paper's half networks kept 1000; labels are unchanged).
    config.model.fc8_outputs = "half"
    # "paper" (Gaussian std 0.01/0.005) stalls on its initial plateau for longer than a
    # CPU-scale run lasts; "he" (He-normal, fc8 as in the paper) on inputs scaled by 1/64
    # starts learning within ~150 steps. The paper config uses "paper".
    config.model.init = "he"
    # The network family (kt_transfer/networks/families.py): caffenet (the paper's), resnet,
    # vit, keras_hub (a keras-hub preset's backbone), or module:function for your own
    # (README, "Your network, your data"). n counts
    # its blocks. input_size, width (caffenet, resnet), dropout and init (caffenet) apply.
    config.model.network = "caffenet"
    # In "+" treatments, what a copied block's BatchNorm layers do: "train" (statistics,
    # scale and shift updated with the rest) or "frozen" (inference mode, the base's).
    # Frozen blocks always keep theirs. No effect on CaffeNet (it has no BatchNorm).
    config.model.batchnorm_fine_tune = "train"
    config.model.resnet = ml_collections.ConfigDict()
    config.model.resnet.stages = (2, 2, 2, 2)  # residual blocks per stage (ResNet-18)
    config.model.resnet.block = "basic"  # basic | bottleneck (ResNet-50: (3, 4, 6, 3))
    config.model.resnet.stem = "small"  # small: one 3x3 conv | imagenet: 7x7/2 and a max pool
    config.model.vit = ml_collections.ConfigDict()
    config.model.vit.patch_size = 8
    config.model.vit.hidden_dim = 64
    config.model.vit.num_heads = 4
    config.model.vit.num_blocks = 4
    config.model.vit.mlp_dim = 128
    # keras_hub: the backbone of a local keras-hub preset directory (save_to_preset's), cut
    # into blocks at these layer names (each ends a block; empty: its stem and each level
    # of its feature pyramid). --base_model=<the preset> copies its pretrained weights
    # (networks/hub.py; needs pip install "kt_transfer[hub]").
    config.model.keras_hub = ml_collections.ConfigDict()
    config.model.keras_hub.preset = ""
    config.model.keras_hub.cut_points = ()

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64
    config.train.base_lr = 0.01
    config.train.lr_step_size = 1500  # iterations between x lr_gamma steps
    config.train.lr_gamma = 0.1
    # Not in the paper: the lr ramps up linearly over the first 100 steps. Without it, about
    # 1 in 4 CPU-scale networks (He init, lr 0.01) blew up in their first steps and stayed
    # at chance (B2B: epoch-1 loss 4.46, top-1 0.02; with warmup: 3.59, top-1 0.26).
    config.train.warmup_steps = 100
    config.train.total_steps = 2000  # every network of the grid trains this many
    # Validation interval: 20 evaluations a run, so mean_highest_top1 (the paper's top
    # 10 of 450 evaluations, 2.2%) is the best of 20 here (top 5%). One evaluation on
    # the half's 2,000 cached validation images is ~0.6 s of forward passes: 40 would add
    # ~15-30% to a cell, 20 add ~5-10% over the former 10.
    config.train.steps_per_epoch = 100
    config.train.budget_epochs = 0  # >0: stop after this many epochs (Hyperband trials)
    # >0: train without this seeded part of the training images and report top-1 on it
    # (set by --mode=tune from tune.holdout_fraction; its runs are named *_ho<fraction>).
    config.train.holdout_fraction = 0.0
    # >0: a smaller target task. Every network trains on this many images of each class
    # of its half (a seeded sample, the same for the whole split), but a transfer copies
    # a source base trained on all of its half: the paper's reduced-data networks, where
    # the source saw much more than the target (grid axis: grid.target_images_per_class).
    config.train.target_images_per_class = 0
    config.train.backup_every_steps = 100  # a killed run resumes from its last backup
    config.train.log_every_steps = 100  # per-layer TensorBoard curves
    config.train.momentum = 0.9
    config.train.weight_decay = 5e-4
    config.train.bias_lr_mult = 2.0
    config.train.copied_lr_mult = 1.0  # lr multiplier of copied layers in "+" treatments
    config.train.copied_fc_lr_mult = -1.0  # copied fc6/fc7 if >= 0; else copied_lr_mult
    config.train.seed = 0
    # Speed switches for GPUs: "mixed_float16" (V100/T4 and newer) or "mixed_bfloat16"
    # (A100/H100, TPUs) halve activation memory and use tensor cores; XLA fuses the
    # step's ops. On CPUs both are usually slower: keep float32 and jit_compile off.
    config.train.precision = "float32"
    config.train.jit_compile = False

    # --mode=grid: the paper's experiment (Figure 2), replicated over splits and directions
    # (the paper pools AnB with BnA and BnB with AnA over its random splits). Treatments are
    # named in the A -> B direction; direction "BtoA" runs their mirror images (AnA, BnA+,
    # RnA, ...). grid.splits empty: the config's one split. A split with fixed halves
    # (natman, all) gets replicates from seeds: "natman.s1" has natman's halves and
    # train.seed + 1 (README, "Seeded replicates").
    config.grid = ml_collections.ConfigDict()
    config.grid.treatments = ("BnB", "BnB+", "AnB", "AnB+", "RnB")
    config.grid.ns = (1, 2, 3, 4, 5, 6, 7)
    # The unit of replication is the class partition (a split): the paper's 4 random
    # halves, each in both directions (directions share a partition and count once).
    config.grid.splits = ("random0", "random1", "random2", "random3")
    config.grid.directions = ("AtoB", "BtoA")
    # The restart control B8B+ (A8A+) in every replicate: the base's own 8 layers trained
    # again with the schedule restarted, which separates "re-initialise the top layers"
    # (BnB+ - B8B+) from "train longer from a warm restart" (B8B+ - base).
    config.grid.restart_control = True
    # Target sizes to run the grid at, one after another (each its own experiment and
    # report), e.g. (0, 10, 5): 0 is the full half. Empty: train.target_images_per_class.
    config.grid.target_images_per_class = ()
    # Where the cells train (runs/executors.py; docs/distributed.md): "local", a pool of
    # persistent worker processes on this machine, one per cpus_per_cell cores (on the
    # 2-core machine one worker on both cores was not slower than two one-core workers:
    # docs/performance.md); or "ray", Ray tasks on the cluster at ray_address (else
    # $RAY_ADDRESS; "auto": the cluster this machine is in; neither: a Ray instance on this
    # machine), each asking Ray for cpus_per_cell CPUs and gpus_per_cell GPUs. A cell whose
    # worker or node dies runs again, from its backup, up to `retries` times.
    config.grid.executor = "local"
    config.grid.ray_address = ""
    config.grid.cpus_per_cell = 2
    config.grid.gpus_per_cell = 0
    config.grid.retries = 2
    # Networks of a split that read the same target half train as one pack, this many at
    # most: one input stream, one step for all (training/packing.py; docs/performance.md).
    config.grid.pack_size = 5
    config.grid.paper_overlay = True  # draw the published numbers on random splits
    # A copy of each finished cell's record (metrics.json, config.json; no weights) kept
    # here as the grid runs, and restored from here first: a grid carried across sessions
    # and machines (e.g. docs/figure_grid/records under version control). "": none.
    config.grid.records_dir = ""

    # --mode=similarity: CKA, linear probes and LogME from the trained networks.
    config.similarity = ml_collections.ConfigDict()
    config.similarity.halves = ("A", "B")  # validation images of these halves for CKA
    config.similarity.max_images = 1000  # validation images per half
    config.similarity.probe_train_images = 2500  # half B training images for the probes
    config.similarity.probe_epochs = 30
    config.similarity.transfer_images = 500  # per transfer network's CKA with its base
    config.similarity.max_transfer_runs = 200

    # --mode=tune --n=4: keras-tuner searches the lr multiplier of the copied layers.
    config.tune = ml_collections.ConfigDict()
    config.tune.treatment = "AnB+"  # or BnB+ (BnA+, AnA+)
    config.tune.tuner = "random"  # random | bayesian | hyperband
    config.tune.max_trials = 6
    config.tune.copied_lr_mults = (1.0, 0.3, 0.1, 0.03, 0.01, 0.0)
    config.tune.copied_fc_lr_mults = ()  # e.g. (1.0, 0.1): copied fc6/fc7 apart (n >= 6)
    config.tune.hyperband_factor = 3
    # The sweep's objective: top-1 on this seeded part of the target half's training
    # images, held out of every trial's training; validation top-1 is reported beside it,
    # unbiased by the choice. 0: choose on validation top-1 itself (biased upward).
    config.tune.holdout_fraction = 0.1
    config.tune.seed = 0
    return config
