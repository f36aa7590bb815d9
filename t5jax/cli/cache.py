"""`t5jax cache`: builds the example stores of a task (or a mixture's tasks) for a split.

    t5jax cache --task c4_span_corruption --workers 8
    t5jax cache --task my_corpus --module my_corpus --data_dir gs://bucket/t5jax \
        --runner DataflowRunner --beam_option=--project=P --beam_option=--region=R ...

The store goes where training will look for it (the data dir, keyed by the task's
fingerprint); a killed build run again resumes from its committed shards.
"""

from __future__ import annotations

from t5jax import store
from t5jax.data import registry
from t5jax.data import task_store


def run(args) -> list[dict]:
  """Builds (or resumes, or finds complete) each store; returns their manifests."""
  import seqio  # pylint: disable=g-import-not-at-top
  build = task_store.Build(workers=args.workers, runner=args.runner,
                           options=tuple(args.beam_option), modules=tuple(args.module),
                           progress_seconds=args.progress_seconds, rebuild=args.rebuild)
  manifests = []
  for task in seqio.get_subtasks(registry.get_task_or_mixture(args.task)):
    examples = task_store.ensure(task, args.split, build=build)
    location, manifest = examples.location, examples.manifest
    if args.verify:
      shards = store.verify(location)
      print(f"verified {shards} shards of {location}: every sha256 matches")
    print(f"{task.name}/{args.split}: {manifest['num_examples']} examples, "
          f"{sum(manifest['num_tokens'].values())} tokens, {manifest['bytes']} bytes in "
          f"{len(manifest['shards'])} shards at {location}")
    manifests.append(manifest)
  return manifests
