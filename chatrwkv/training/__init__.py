"""Training the tiny demo model: data preparation (`shakespeare`) and the trainer (`trainer`)."""
