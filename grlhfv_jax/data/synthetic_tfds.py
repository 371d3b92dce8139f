"""TFDS builder for the synthetic preference world (array_record files, no TensorFlow needed).

    builder = build(data_dir, WorldConfig(sizes=...))           # generates once, then reuses
    src = builder.as_data_source("grm_train", decoders={"image": tfds.decode.SkipDecoding()})

Works without TensorFlow because (a) images are handed to TFDS already PNG-encoded (TFDS's own
numpy -> PNG encoder needs TF, bytes pass straight through), (b) the file format is array_record
and (c) records are read back with `as_data_source` (random access, numpy/PIL decoding).

One schema for every split (fields a split does not use are empty / 0); see `world.make_record`.
Each distinct `WorldConfig` gets its own builder config (name `w<hash>`) under `data_dir`, so
changing any world setting never reuses stale files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from grlhfv_jax.data import world as W

DATASET_NAME = "grlhfv_world"
VERSION = "1.4.0"

TEXT_FIELDS = (
    "id",
    "split",
    "kind",
    "question",
    "scene",
    "heldout",
    "response_1",
    "response_2",
    "judgment",
    "answer",
    "pair_type",
)


@dataclasses.dataclass(kw_only=True)
class WorldBuilderConfig(tfds.core.BuilderConfig):
    """A BuilderConfig carrying the world's settings (JSON of `WorldConfig`)."""

    world_json: str = ""

    @classmethod
    def from_world(cls, cfg: W.WorldConfig) -> WorldBuilderConfig:
        js = cfg.to_json()
        name = "w" + hashlib.sha1(js.encode()).hexdigest()[:10]
        return cls(name=name, version=VERSION, description=f"synthetic world {js}", world_json=js)

    @property
    def world(self) -> W.WorldConfig:
        import json

        return W.WorldConfig.from_dict(json.loads(self.world_json))


class GrlhfvWorld(tfds.core.GeneratorBasedBuilder):
    """Synthetic multimodal preference world (see grlhfv_jax/data/world/ and docs/data.md)."""

    name = DATASET_NAME
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {
        "1.0.0": "First release: shapes world, hidden principle, 7 splits.",
        "1.1.0": "Pair types (minimal, style, mixed) and the pair_type field.",
        "1.2.0": "WorldConfig.sft_grm_analysis (style, the old default | facts | none).",
        "1.3.0": "WorldConfig.sft_grm_first_scores / sft_grm_second_scores (the defaults keep 1.2.0's judgments).",
        "1.4.0": "WorldConfig.sft_grm_opinions / sft_grm_opinion_strength (the defaults keep 1.3.0's judgments).",
    }
    BUILDER_CONFIGS = [WorldBuilderConfig.from_world(W.WorldConfig())]
    # TFDS derives this from the package and, for a regular package, then touches the optional
    # `importlib_resources` module; giving the path directly avoids that dependency.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {k: tfds.features.Text() for k in TEXT_FIELDS}
        features.update(
            image=tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            overall_response=np.int32,  # 1 | 2 for pair splits, 0 otherwise
            oracle_1=np.float32,
            oracle_2=np.float32,
            label_noisy=np.bool_,
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(world=self.builder_config.world_json),
            disable_shuffling=True,  # record i of a split is world.make_record(cfg, split, i)
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config.world
        return {s: self._generate_examples(s) for s in W.SPLITS if cfg.size(s) > 0}

    def _generate_examples(self, split: str):
        cfg = self.builder_config.world
        for i in range(cfg.size(split)):
            rec = W.make_record(cfg, split, i, encode_image=True)  # PNG bytes: no TF needed
            out = {k: rec.get(k, "") for k in TEXT_FIELDS}
            out.update(
                image=rec["image"],
                overall_response=int(rec.get("overall_response", 0)),
                oracle_1=float(rec.get("oracle_1", 0.0)),
                oracle_2=float(rec.get("oracle_2", 0.0)),
                label_noisy=bool(rec.get("label_noisy", False)),
            )
            yield rec["id"], out


def builder(data_dir: str, cfg: W.WorldConfig | None = None) -> GrlhfvWorld:
    """The builder for `cfg` (default world) under `data_dir` (not generated yet)."""
    cfg = W.WorldConfig() if cfg is None else cfg
    config = WorldBuilderConfig.from_world(cfg)
    if config.name in {c.name for c in GrlhfvWorld.BUILDER_CONFIGS}:
        config = config.name  # TFDS refuses a custom config named like a registered one
    return GrlhfvWorld(data_dir=os.fspath(data_dir), config=config, file_format="array_record")


def build(data_dir: str, cfg: W.WorldConfig | None = None, *, quiet: bool = True) -> GrlhfvWorld:
    """Generate the dataset for `cfg` under `data_dir` if it is not there yet; return the builder."""
    b = builder(data_dir, cfg)
    if quiet:
        tfds.disable_progress_bar()
    b.download_and_prepare(
        download_config=tfds.download.DownloadConfig(download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    )
    return b
