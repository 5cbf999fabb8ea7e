"""The keys of self-training (sftcli/objectives/self_training.py): loss.self_training_*."""

from __future__ import annotations

from typing import Any, Literal

from sftcli.fields import Checks, ObjectiveKeys, key


class SelfTrainingKeys(ObjectiveKeys):
    self_training_weight: float = key(0.0, "weight of self-training: cross-entropy of unlabeled texts against "
                                           "pseudo-labels of the classifier", ge=0)
    self_training_every: int = key(50, "re-label the unlabeled texts (loss.self_training_sample of them) with the "
                                       "current classifier every N steps (first at step N)", ge=1)
    self_training_sample: int | None = key(
        8192, "each re-label scores a seeded sample of this many unlabeled texts, not the whole pile, so its cost "
              "follows the sample and not the pile (a pile this size or smaller is scored whole); pseudo-labels "
              "are chosen from the sample; null = every unlabeled text", ge=1)
    self_training_resample: bool = key(
        False, "draw a new sample at each re-label (true) or score the same sample every round (false); true "
               "needs loss.self_training_ensemble=false and one teacher (their means are over the same texts)")
    self_training_rounds: int | None = key(
        None, "split the run's steps into this many rounds (re-label every steps / rounds, so with trainer.epochs "
              "the rounds follow the labeled set's size); null = every loss.self_training_every steps", ge=2)
    self_training_top: float = key(0.5, "keep this share of the texts as pseudo-labels, most confident first (of "
                                        "each predicted class, or overall: see select)", gt=0, le=1)
    self_training_student: Literal["continue", "fresh"] = key(
        "continue", "continue (the labeling model keeps training) | fresh (each re-label restarts from the initial "
                    "weights, optimizer and lr schedule: teacher -> student rounds)")
    self_training_select: Literal["per_class", "global"] = key(
        "per_class", "per_class (top share of each predicted class) | global (top share of all texts, whatever "
                     "their class)")
    self_training_top_step: float = key(0.0, "curriculum: each later re-label keeps this much more (top, top + "
                                             "step, ...; at most 1)", ge=0, le=1)
    self_training_targets: Literal["hard", "soft"] = key(
        "hard", "hard (the predicted class) | soft (the labeling model's probabilities: distillation) for the "
                "kept texts")
    self_training_draw: Literal["all", "kept"] = key(
        "all", "which unlabeled texts a step draws once there are pseudo-labels: all (those without one add "
               "nothing) | kept (only the pseudo-labeled ones, so each unlabeled row carries a target; a term "
               "that reads every unlabeled text, such as the seed's InfoNCE, still draws from all)")
    self_training_labeler: Literal["last", "best"] = key(
        "last", "which model re-labels: last (the model as it is at the re-label) | best (the best on validation "
                "so far, of any round; needs loss.self_training_student=fresh)")
    self_training_prior: Literal["labeled", "unlabeled"] = key(
        "labeled", "the class balance pseudo-labels are chosen under: labeled (the labeling model's own) | "
                   "unlabeled (its probabilities reweighted to the unlabeled texts' prior, estimated from them)")
    self_training_ensemble: bool = key(False, "label with the mean probabilities of every labeling model so far "
                                              "(this re-label's and the earlier ones')")
    self_training_teachers: int = key(
        1, "this many teachers, a round each from the initial weights on the labels alone, before the students' "
           "rounds (with loss.self_training_rounds the run is longer by the extra teachers' rounds); the mean of "
           "their probabilities labels the first student (an ensemble); needs loss.self_training_student=fresh",
        ge=1)

    def check_keys(self, checks: Checks) -> None:
        checks.require(self.self_training_labeler == "last" or self.self_training_student == "fresh",
                       "self_training_labeler", "best needs loss.self_training_student=fresh (a continuing "
                       "model cannot be swapped for the best one)")
        checks.require(not self.self_training_resample or (not self.self_training_ensemble
                                                            and self.self_training_teachers == 1),
                       "self_training_resample", "a new sample each round cannot be averaged with the earlier "
                       "rounds' probabilities (loss.self_training_ensemble, loss.self_training_teachers > 1 average "
                       "over the same texts); set loss.self_training_resample=false")
        checks.require(self.self_training_teachers == 1 or self.self_training_student == "fresh",
                       "self_training_teachers", f"{self.self_training_teachers} teachers need "
                       "loss.self_training_student=fresh (each teacher starts from the initial weights)")

    def unlabeled_keys(self) -> list[str]:
        return ["self_training_weight"] if self.self_training_weight > 0 else []

    def check_run(self, run: Any, checks: Checks) -> None:
        tr = run.trainer
        if self.self_training_weight > 0 and self.self_training_labeler == "best":
            checks.require(tr.eval_every > 0, "loss.self_training_labeler",
                           "best needs evaluations during training (trainer.eval_every > 0)")
        if self.self_training_rounds is not None:
            checks.require(self.self_training_weight > 0, "loss.self_training_rounds",
                           "has no effect without self-training (loss.self_training_weight > 0)")
        # With trainer.epochs the steps are known once the data is (sftcli/engine/build.py checks then).
        if (run.strategy is not None and self.self_training_rounds is None and self.self_training_weight > 0
                and tr.epochs is None and self.self_training_every >= tr.max_steps):
            checks.require(False, "loss.self_training_every",
                           f"{self.self_training_every} >= trainer.max_steps={tr.max_steps}: self-training "
                           f"re-labels first after step {self.self_training_every}, so no round would happen; "
                           "lower loss.self_training_every or raise trainer.max_steps")

    def drop_unlabeled(self, run: Any, notes: list[str]) -> None:
        tr = run.trainer
        if self.self_training_weight > 0 and self.self_training_student == "fresh":
            # The first round (the teacher) alone.
            if self.self_training_rounds is not None and tr.epochs is not None:
                tr.epochs = tr.epochs / self.self_training_rounds
                notes.append(f"trainer.epochs={tr.epochs:g}: the first self-training round (the teacher)")
            else:
                round_steps = (tr.max_steps // self.self_training_rounds if self.self_training_rounds
                               else self.self_training_every)
                tr.max_steps = max(1, min(tr.max_steps, round_steps))
                notes.append(f"trainer.max_steps={tr.max_steps}: the first self-training round (the teacher)")
        self.self_training_weight = 0.0
        self.self_training_rounds = None
        self.self_training_teachers = 1  # nothing to label: one teacher, the round as a whole
