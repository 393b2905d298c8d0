"""Hardware drivers (printers, audio, LEDs). Never imports ``agent``."""
