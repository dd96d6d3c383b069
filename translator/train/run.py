"""A training run: data, tokenizer, model, fit, resume, and the model folder it writes."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from translator import __version__
from translator import config as config_lib
from translator.data import corpus as corpus_lib
from translator import model_folder as mf
from translator.train import distribute, lineage
from translator.train.lineage import RunFolderError
from translator.train.callbacks import EpochProgress, TrainingControl
from translator.train.state import STATE_FILE, RunState
from translator.io_utils import (atomic_path, atomic_write_bytes, atomic_write_json,
                                 remove_orphans)
from translator.data.registry import get_corpus
from translator.evaluate import evaluate_model
from translator.faults import crash_point
from translator.metrics import bleu
from translator.model import MaskedCrossEntropy
from translator.train.optimizer import FusedAdam
from translator.data.pipeline import (
    SubwordSampler, TrainingBatches, batches_dataset, encode_pairs, eval_batches)
from translator.data.tokenizer import Tokenizer
from translator.translator import Translator

# Sections whose change makes a folder hold "a different run". Training lengths and
# budgets (epochs, max_minutes, patience) may change between sessions of one run.
_RESUMABLE_KEYS = {"epochs", "max_minutes", "patience", "checkpoint_every"}


@dataclass
class TrainResult:
    folder: Path
    best_dev_bleu: float  # an ensemble's: the ensemble's dev BLEU
    scores: dict
    state: RunState | None  # None for an ensemble: each member has its own
    members: list[TrainResult] = field(default_factory=list)


def train(config: config_lib.Config, output: Path | str, overwrite: bool = False,
          log: Callable[[str], None] = print, verbose: int | str = "auto",
          more_epochs: int | None = None, strategy: str = "default") -> TrainResult:
    """Trains (or resumes) the run `config` describes into the model folder `output`.

    more_epochs: extend the run in `output` (finished, or stopped by early stopping or its
    time budget) by that many epochs, from where it stopped: weights, optimizer and
    learning rate; early stopping starts counting afresh and no time budget applies.
    With config.training.init_from, a new run starts from that model's weights and
    tokenizer, with a fresh optimizer and schedule (fine-tuning).
    strategy: default, mirrored or multiworker (translator.train.distribute); under
    multiworker every worker calls train() alike, and only the chief writes `output`.
    """
    if config.training.members > 1:
        return _train_members(config, Path(output), overwrite, log, verbose, more_epochs,
                              strategy)
    distribution = distribute.make_strategy(strategy)
    if not distribute.is_chief(distribution):
        with distribute.worker_folder(Path(output), overwrite) as own:
            result = _train(config, own, overwrite, lambda message: None, 0, more_epochs,
                            distribution, chief=False)
        distribute.agree(distribution, False)  # wait for the chief to finish its scores
        return dataclasses.replace(result, folder=Path(output))
    result = _train(config, Path(output), overwrite, log, verbose, more_epochs, distribution)
    distribute.agree(distribution, False)  # the workers wait for this
    return result


def _train(config, folder: Path, overwrite: bool, log, verbose, more_epochs, distribution,
           chief: bool = True, shared: tuple | None = None) -> TrainResult:
    """One model's run. shared: the (splits, tokenizer) of the ensemble this run is a
    member of."""
    started = time.monotonic()
    if more_epochs is not None:
        config = lineage.extended(config, folder, more_epochs)
    if config.training.init_from:
        lineage.check_parent(config)
    resume = _check_folder(folder, config, overwrite)
    keras.utils.set_random_seed(config.training.seed)
    splits, tokenizer = _data_and_tokenizer(folder, config, overwrite, resume, log, shared)
    train_ids = encode_pairs(tokenizer, splits.train, config.data.max_tokens)
    dev_ids = encode_pairs(tokenizer, splits.dev)
    log(f"encoded: {len(train_ids)} training pairs, {train_ids.target_tokens} target tokens; "
        f"{train_ids.dropped_too_long} dropped for exceeding {config.data.max_tokens} subwords")
    cfg = config.training
    resample = (SubwordSampler(tokenizer, splits.train, train_ids, cfg.subword_alpha,
                               cfg.subword_nbest, cfg.seed, config.data.max_tokens)
                if cfg.subword_alpha else None)
    batches = TrainingBatches(train_ids, cfg.batch_size, cfg.bucket_width, cfg.seed, resample)
    # before any variable exists: under multiworker, creating one is a collective
    if not distribute.same_everywhere(distribution, _resume_step(folder, resume)):
        raise distribute.StrategyError(
            f"the workers resume from different steps: each must see {folder} as the chief "
            "writes it (a shared file system), or all start afresh (--overwrite)")
    with distribution.scope():
        model, state = _model_and_state(folder, config, tokenizer, splits.files, resume, log,
                                        extend=more_epochs is not None)
    if distribution is not tf.distribute.get_strategy():
        replicas = distribution.num_replicas_in_sync
        log(f"strategy: {type(distribution).__name__}, {replicas} replica"
            f"{'s' if replicas > 1 else ''}; batches of {config.training.batch_size} sentences"
            + (" split between them" if replicas > 1 else
               " (one device: --strategy default trains the same, with the compiled kernels)"))
    if config.training.init_from and not state.parent:
        state.parent = lineage.parent_card(config, tokenizer, model, splits, log)
    if resume:  # the budget keys (epochs, max_minutes, ...) may have grown
        _write_config(folder, config)
    if not state.finished:
        _fit(model, config, tokenizer, splits, batches, dev_ids, folder, state, log, verbose,
             distribution, chief)
    if not chief:  # the chief scores the model and writes the run card
        return TrainResult(folder, state.best_bleu, {}, state)
    best = mf.load_weights(folder / mf.WEIGHTS_FILE)
    scores = _final_scores(folder, best, tokenizer, config, splits,
                           {"best_epoch": state.best_epoch, "stop_reason": state.stop_reason}, log)
    _write_run_card(folder, config, splits, time.monotonic() - started, _how_it_trained(state))
    return TrainResult(folder, state.best_bleu, scores, state)


def _how_it_trained(state: RunState) -> dict:
    """What the run card says of a run's training."""
    return {"steps": state.global_step, "epochs": state.epoch,
            "training_minutes": round(state.seconds / 60, 2), "stop_reason": state.stop_reason,
            **({"parent": state.parent} if state.parent else {})}


def _train_members(config, folder: Path, overwrite: bool, log, verbose, more_epochs,
                   strategy: str) -> TrainResult:
    """An ensemble's run: one tokenizer, then each member's run (mf.member_config) into its
    own folder under the ensemble's, then the ensemble's scores. Resuming resumes the
    member that was training; the finished ones are scored again."""
    started = time.monotonic()
    n = config.training.members
    if more_epochs is not None:
        raise RunFolderError(f"{folder}: --continue extends one model's run, and this is an "
                             f"ensemble of {n} (training.members)")
    if strategy != "default":
        raise distribute.StrategyError(f"training.members ({n}) trains on one device: use "
                                       "--strategy default")
    resume = _check_folder(folder, config, overwrite)
    shared = _data_and_tokenizer(folder, config, overwrite, resume, log)
    if resume:  # the budget keys (epochs, max_minutes, ...) may have grown
        _write_config(folder, config)
    distribution = distribute.make_strategy(strategy)
    results = []
    for k, member in enumerate(mf.member_folders(folder, config), 1):
        member_config = mf.member_config(config, k)
        budget = member_config.training.max_minutes
        log(f"member {k} of {n}: seed {member_config.training.seed}"
            f"{f', up to {budget:g} minutes' if budget else ''}, in {member}")
        results.append(_train(member_config, member, False, log, verbose, None, distribution,
                              shared=shared))
    splits, tokenizer = shared
    ensemble = mf.load_model_folder(folder)[0]  # the members' best weights, checked
    cards = [{"folder": r.folder.relative_to(folder).as_posix(),
              "seed": mf.member_config(config, k).training.seed,
              "best_epoch": r.state.best_epoch, "dev_bleu": r.best_dev_bleu,
              **({"test_bleu": r.scores["test"]["bleu"]["score"]} if "test" in r.scores else {}),
              **_how_it_trained(r.state)}
             for k, r in enumerate(results, 1)]
    scores = _final_scores(folder, ensemble, tokenizer, config, splits, {"members": cards}, log)
    _write_run_card(folder, config, splits, time.monotonic() - started, {
        "training_minutes": round(sum(c["training_minutes"] for c in cards), 2),
        "members": cards})
    return TrainResult(folder, scores["dev"]["bleu"]["score"], scores, None, results)


def _resume_step(folder: Path, resume: bool) -> int:
    """The step a run resumes from (0 for a fresh one)."""
    checkpoint = folder / mf.CHECKPOINT_DIR
    if not (resume and (checkpoint / STATE_FILE).exists()):
        return 0
    return RunState.load(checkpoint).global_step


def _write_config(folder: Path, config: config_lib.Config) -> None:
    atomic_write_bytes(folder / mf.CONFIG_FILE, config_lib.dump(config).encode("utf-8"))


def _check_folder(folder: Path, config: config_lib.Config, overwrite: bool) -> bool:
    """Returns True when the folder holds this very run to resume; refuses other runs.

    With overwrite, a model folder (or an empty one) may be replaced; the caller deletes
    it once the data has loaded. A folder that holds no run is never deleted.
    """
    holds_run = (folder / mf.CONFIG_FILE).exists() or (folder / mf.CHECKPOINT_DIR).exists()
    if folder.exists() and not holds_run and any(folder.iterdir()):
        raise RunFolderError(f"{folder} is not empty and holds no model; choose another "
                             "--output (--overwrite replaces model folders only)")
    trained = any((run / mf.CHECKPOINT_DIR / STATE_FILE).exists()
                  or (run / mf.WEIGHTS_FILE).exists()
                  for run in [folder, *(folder / mf.MEMBERS_DIR).glob("*")])
    if overwrite or not (folder / mf.CONFIG_FILE).exists() or not trained:
        return False  # (a run stopped before its first checkpoint trained nothing: start it)
    old = mf.read_config(folder).to_dict()
    new = config.to_dict()
    if old["tokenizer"] != new["tokenizer"]:
        raise RunFolderError(
            f"{folder} was trained with tokenizer {old['tokenizer']}, not {new['tokenizer']}: "
            "resuming with a different tokenizer or vocabulary is refused; "
            "use --overwrite or another --output")
    differ = [f"{s}.{k}" for s in new for k in new[s]
              if new[s][k] != old[s][k] and not (s == "training" and k in _RESUMABLE_KEYS)]
    if differ:
        raise RunFolderError(f"{folder} holds a different run (differs in {', '.join(differ)}); "
                             "use --overwrite to replace it, or another --output")
    return True


def _data_and_tokenizer(folder: Path, config, overwrite: bool, resume: bool, log,
                        shared: tuple | None = None) -> tuple:
    """The data splits and the tokenizer, in the folder made ready for the run: replaced
    (overwrite), cleared of what a killed run was writing, its config written. shared:
    an ensemble's (splits, tokenizer), which its members' runs take."""
    if shared:
        splits = shared[0]
    else:
        splits = corpus_lib.load_splits(config.data)
        log(f"data: {len(splits.train)} training pairs ({splits.clean_report}); "
            f"{len(splits.dev)} dev pairs; {len(splits.test)} test pairs")
    if overwrite and folder.exists():
        shutil.rmtree(folder)  # only now that the data has loaded, and only a model folder
    folder.mkdir(parents=True, exist_ok=True)
    for part in (folder, folder / mf.CHECKPOINT_DIR):  # what a killed run was writing
        remove_orphans(part)
    if not resume:  # first, so that the same command resumes a run killed at any moment
        _write_config(folder, config)
    return splits, _tokenizer(folder, config, splits, resume, log, shared[1] if shared else None)


def _tokenizer(folder: Path, config, splits, resume: bool, log,
               given: Tokenizer | None = None) -> Tokenizer:
    if resume:
        tokenizer = Tokenizer.load(folder)
    elif given is not None:
        tokenizer = given
        for path in tokenizer.save(folder):
            log(f"tokenizer: {path} (the ensemble's)")
    elif config.training.init_from:
        tokenizer = Tokenizer.load(config.training.init_from)
        for path in tokenizer.save(folder):
            log(f"tokenizer: {path} (the parent's, {tokenizer.src_vocab_size} pieces)")
    else:
        cfg = config.tokenizer
        tokenizer = Tokenizer.train([s for s, _ in splits.train], [t for _, t in splits.train],
                                    cfg.vocab_size, cfg.model_type, cfg.joint)
        for path in tokenizer.save(folder):
            log(f"tokenizer: {path} ({tokenizer.src_vocab_size} pieces"
                f"{', joint' if tokenizer.joint else ''})")
        crash_point("tokenizer-saved")
    return tokenizer


def _model_and_state(folder: Path, config, tokenizer, data_files: dict, resume: bool, log,
                     extend: bool = False):
    checkpoint = folder / mf.CHECKPOINT_DIR
    if resume and (checkpoint / STATE_FILE).exists():
        state = RunState.load(checkpoint)
        if state.data_files and state.data_files != data_files:
            changed = sorted(set(state.data_files.items()) ^ set(data_files.items()))
            raise RunFolderError(f"{folder} was trained on other data ({changed[0][0]} "
                                 "differs); use --overwrite or another --output")
        model = mf.load_checkpoint(checkpoint / state.checkpoint)
        state.restore_seeds(model)
        if extend:  # early stopping counts afresh over the extension
            state.bad_evals, state.stop_reason = 0, ""
        state.finished = state.done(config.training)  # a larger budget continues the run
        if state.finished:
            log(f"{folder} is finished ({state.stop_reason}; best dev BLEU "
                f"{state.best_bleu:.2f}); scoring it again. To train on, raise "
                "training.epochs, training.max_minutes or training.patience")
        else:
            log(f"resuming from step {state.global_step} of {folder} (epoch {state.epoch + 1}, "
                f"step {state.step_in_epoch} of it; best dev BLEU {state.best_bleu:.2f})")
        return model, state
    if extend:
        raise RunFolderError(f"{folder} holds no training run to continue")
    model = compiled_model(config, tokenizer)
    if config.training.init_from:  # the weights only: the optimizer starts afresh
        with warnings.catch_warnings():  # Keras' notice that the file has no optimizer
            warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
            model.load_weights(Path(config.training.init_from) / mf.WEIGHTS_FILE)
    log(f"model: {model.count_params():,} parameters")
    return model, RunState(data_files=dict(data_files))


def compiled_model(config: config_lib.Config, tokenizer: Tokenizer):
    """A fresh model, built and compiled for training (bench/train_speed.py times this)."""
    model = mf.build_model(config, tokenizer)
    model.build()
    cfg = config.training
    model.compile(
        optimizer=FusedAdam(cfg.learning_rate, clipnorm=cfg.clipnorm),
        loss=MaskedCrossEntropy(cfg.label_smoothing, operations=model.operations),
        jit_compile=False,  # XLA does not pay in bfloat16 on CPU
    )
    return model


def _fit(model, config, tokenizer, splits, batches: TrainingBatches, dev_ids, folder: Path,
         state: RunState, log, verbose, distribution, chief: bool = True) -> None:
    """Trains until the run is finished or stopped. Under a multi-worker strategy only the
    chief translates the dev set; every worker takes its BLEU (distribute.from_chief)."""
    translator = Translator(model, tokenizer, config)
    dev_src, dev_ref = [s for s, _ in splits.dev], [t for _, t in splits.dev]
    beam = config.training.eval_beam

    def dev_bleu() -> float:
        score = 0.0
        if chief:
            hyps = translator.translate(dev_src, beam=beam, nbest=1)
            crash_point("dev-evaluation")
            score = bleu(hyps, dev_ref, config.data.tgt).score
        return distribute.from_chief(distribution, score)

    def save_best() -> None:
        with atomic_path(folder / mf.WEIGHTS_FILE) as tmp:
            _save_inference(model, tmp)
            crash_point("best-model-write")

    control = TrainingControl(folder / mf.CHECKPOINT_DIR, config.training, state,
                              batches.steps_per_epoch, dev_bleu, save_best, log,
                              lambda flag: distribute.agree(distribution, flag))
    # the progress bar before control (why: EpochProgress's docstring)
    callbacks = [EpochProgress(config.training.epochs), control,
                 keras.callbacks.TensorBoard(str(folder / "logs"), update_freq=50)]
    dev_data = eval_batches(dev_ids)
    validation = batches_dataset(lambda: iter(dev_data))
    budget = config.training.max_minutes
    log(f"training: {batches.steps_per_epoch} steps per epoch, up to {config.training.epochs} "
        f"epochs{f' or {budget} minutes' if budget else ''}")
    try:
        while not state.finished and not model.stop_training:
            epoch, skip = state.epoch, state.step_in_epoch
            if skip >= batches.steps_per_epoch:  # stopped in the epoch-end work: redo it
                control.set_model(model)
                control.on_epoch_end(epoch, {})
                continue
            model.fit(batches.dataset(epoch, skip), initial_epoch=epoch, epochs=epoch + 1,
                      steps_per_epoch=batches.steps_per_epoch - skip, validation_data=validation,
                      validation_steps=len(dev_data),
                      callbacks=callbacks, verbose=verbose, shuffle=False)
    except KeyboardInterrupt:
        control.checkpoint()
        log(f"interrupted at step {state.global_step}; run the same command to resume")
        raise
    _average_last(model, config, folder, state, dev_bleu, save_best, log)


def _save_inference(model, path: Path) -> None:
    """Saves the model without optimizer state: the folder's model.keras is for translating."""
    optimizer = model.optimizer
    model.optimizer = None
    try:
        model.save(path)
    finally:
        model.optimizer = optimizer


def _average_last(model, config, folder: Path, state: RunState, dev_bleu, save_best, log) -> None:
    """Averages the last K epochs' weights; keeps the average if its dev BLEU is the best."""
    k = config.training.average_last
    paths = sorted((folder / mf.CHECKPOINT_DIR).glob("epoch-*.weights.h5"),
                   key=lambda p: int(p.name.split("-")[1].split(".")[0]))[-k:] if k else []
    if len(paths) < 2:
        return
    weights = []
    for path in paths:
        model.load_weights(path)
        weights.append(model.get_weights())
    model.set_weights([np.mean(ws, axis=0) for ws in zip(*weights)])
    bleu = dev_bleu()
    log(f"average of the last {len(paths)} epochs: dev BLEU {bleu:.2f} "
        f"(best single {state.best_bleu:.2f})")
    if bleu > state.best_bleu:
        state.best_bleu, state.best_epoch = bleu, -len(paths)
        save_best()
        state.save(folder / mf.CHECKPOINT_DIR)


def _final_scores(folder: Path, model, tokenizer, config, splits, header: dict, log) -> dict:
    """Dev (the configured training search) and test (the configured decoding) scores, with
    95% confidence intervals, after `header` (how the run ended) in scores.json; the test
    evaluation (translations, per-sentence report) is stored as
    `python -m translator.evaluate --split <test split>` stores it."""
    translator = Translator(model, tokenizer, config)
    scores = dict(header)
    for name, pairs, beam in (("dev", splits.dev, config.training.eval_beam),
                              ("test", splits.test, config.decoding.beam)):
        if not pairs:
            continue
        stored = None
        if name == "test":
            split = get_corpus(config.data.corpus).splits[2]
            stored = f"{config.data.corpus}-{split}-{'greedy' if beam == 1 else f'beam{beam}'}"
        scores[name] = evaluate_model(translator, [s for s, _ in pairs], [t for _, t in pairs],
                                      stored or name, folder if stored else None, beam=beam)
        bleu = scores[name]["bleu"]
        log(f"{name}: BLEU {bleu['score']:.2f} (95% CI {bleu['interval'][0]:.2f}-"
            f"{bleu['interval'][1]:.2f}; {bleu['signature']}), "
            f"{'greedy' if beam == 1 else f'beam {beam}'}")
    crash_point("final-scores")
    atomic_write_json(folder / mf.SCORES_FILE, scores)
    return scores


def _write_run_card(folder: Path, config, splits, seconds: float, training: dict) -> None:
    """run.json: the data, the seed, `training` (how long and how far it trained), the
    versions and the machine."""
    import sacrebleu
    import sentencepiece
    import tensorflow as tf

    atomic_write_json(folder / mf.RUN_FILE, {
        "data_files": splits.files,
        "clean_report": str(splits.clean_report),
        "seed": config.training.seed,
        **training,
        "this_session_minutes": round(seconds / 60, 2),
        "folder_format": mf.FOLDER_FORMAT,
        "versions": {"translator": __version__, "python": platform.python_version(),
                     "tensorflow": tf.__version__, "keras": keras.__version__,
                     "sentencepiece": sentencepiece.__version__,
                     "sacrebleu": sacrebleu.__version__, "numpy": np.__version__},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count()},
    })
