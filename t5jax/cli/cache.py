"""`t5jax cache`: builds the example stores of a task (or a mixture's tasks) for a split.

    t5jax cache --task c4_span_corruption --workers 8
    t5jax cache --task my_corpus --module my_corpus --data_dir gs://bucket/t5jax \
        --runner DataflowRunner --beam_option=--project=P --beam_option=--region=R ...

The store goes where training will look for it (the data dir, keyed by the task's
fingerprint); a killed build run again resumes from its committed shards.
"""

from __future__ import annotations

import os

from t5jax.data import cache_build
from t5jax.data import cache_units
from t5jax.data import registry
from t5jax.data import task_cache


def run(args) -> list[dict]:
  """Builds (or resumes, or finds complete) each store; returns their manifests."""
  import seqio  # pylint: disable=g-import-not-at-top
  manifests = []
  for task in seqio.get_subtasks(registry.get_task_or_mixture(args.task)):
    key = task_cache.fingerprint(task, args.split)
    if key is None:
      raise ValueError(
          f"task {task.name!r} reads a function source, whose content t5jax cannot "
          "fingerprint, so its store is rebuilt by each run; give it a file or TFDS source")
    location = task_cache.store_location(task, args.split, key)
    if args.rebuild:
      cache_build.delete(location)
    units = cache_units.plan(task, args.split)
    # Each local worker is one core (tf.data would otherwise give each of them all cores).
    threads = 1 if args.workers and not args.runner else 0
    job = cache_build.Job(task=task.name, split=args.split, location=location, fingerprint=key,
                          modules=tuple(args.module), threads=threads, cwd=os.getcwd())
    manifest = cache_build.build(job, units, workers=args.workers, runner=args.runner,
                                 options=tuple(args.beam_option),
                                 progress_seconds=args.progress_seconds,
                                 task=task if args.workers == 0 and not args.runner else None)
    if args.verify:
      shards = cache_build.verify(location)
      print(f"verified {shards} shards of {location}: every sha256 matches")
    print(f"{task.name}/{args.split}: {manifest['num_examples']} examples, "
          f"{sum(manifest['num_tokens'].values())} tokens, {manifest['bytes']} bytes in "
          f"{len(manifest['shards'])} shards at {location}")
    manifests.append(manifest)
  return manifests
