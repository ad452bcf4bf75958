"""Where batches run: in this process (``local``), on Ray actors (``ray``) or on an OpenAI-compatible
server (``openai``: this process sends the requests, `remote.RemoteGenerator`).

Both engines take the driver's batches in order and give back their candidates in the
same order, so everything the driver decides afterwards (novelty, near duplicates, what
is kept, what is written) is the same on both. On Ray each actor loads the model once and
generates whole batches; the driver keeps at most one batch per actor in flight.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from jaxlm.synth.batch import Batch, Candidate
from jaxlm.synth.config import SynthConfig


def run_batch(batch: Batch, generator, config: SynthConfig) -> list[Candidate]:
    from jaxlm.synth.modes import MODE_CLASSES

    return MODE_CLASSES[config.mode].run_batch(batch, generator, config)


class LocalEngine:
    def __init__(self, config: SynthConfig, generator=None):
        from jaxlm.synth.generator import Generator

        self.config = config
        self.generator = generator or Generator(config.model, quantize=config.quantize)

    def map(self, batches: Iterable[Batch]) -> Iterator[list[Candidate]]:
        for batch in batches:
            yield run_batch(batch, self.generator, self.config)

    def close(self) -> None:
        self.generator.close()


class _Worker:
    """A Ray actor: one model, many batches."""

    def __init__(self, config: SynthConfig):
        from jaxlm.synth.generator import Generator

        self.config, self.generator = config, Generator(config.model, quantize=config.quantize)

    def run(self, batch: Batch) -> list[Candidate]:
        return run_batch(batch, self.generator, self.config)


class RayEngine:
    def __init__(self, config: SynthConfig):
        from jaxlm.cluster import Actors, connect

        self.ray, self._started = connect(config.workers)
        self.actors = Actors(self.ray, _Worker, (config,), config.workers)

    def map(self, batches: Iterable[Batch]) -> Iterator[list[Candidate]]:
        yield from self.actors.map(lambda actor, batch: actor.run.remote(batch), batches)

    def close(self) -> None:
        self.actors.kill()
        if self._started:
            self.ray.shutdown()


def make_engine(config: SynthConfig):
    if config.engine == "openai":
        from jaxlm.synth.remote import RemoteGenerator

        return LocalEngine(config, RemoteGenerator(config))
    return RayEngine(config) if config.engine == "ray" else LocalEngine(config)
