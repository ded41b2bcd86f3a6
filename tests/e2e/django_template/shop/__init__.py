"""The project's app: tasks, and the views that enqueue them and poll their results."""
