"""How fast dSprites images are rendered on the host (a real dSprites run renders every batch).

  python -m benchmarks.render_speed

Prints the time to render 10,000 images at once and the median time of a batch of 64 through
`LazyImages`, as the loop reads them. (A measurement, not a test: it depends on the machine.)
"""

import time

import numpy as np

from amr_jax.data import dsprites


def main() -> None:
  factors = dsprites.index_to_factors(
      np.random.default_rng(1).choice(dsprites.num_images(), 10_000, replace=False))
  dsprites.render(factors[:64])  # warm-up
  start = time.perf_counter()
  dsprites.render(factors)
  many = time.perf_counter() - start
  images = dsprites.LazyImages(factors)
  times = []
  for i in range(10):
    start = time.perf_counter()
    images[np.arange(64 * i, 64 * (i + 1))]
    times.append(time.perf_counter() - start)
  print(f"render: 10,000 images {many:.2f} s; a batch of 64 {1e3 * np.median(times):.1f} ms "
        f"(median of 10)")


if __name__ == "__main__":
  main()
