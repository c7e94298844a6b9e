"""The ``edgeship`` command line. Each top-level command lives in its own module and is
imported only when it runs, so ``edgeship agent run`` never pays for the converter."""
