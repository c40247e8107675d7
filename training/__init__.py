"""The trainer's side of pipeline training: drive forward/backward/step across the stages."""
