"""Lightning callbacks of dlvision (pictures logged to TensorBoard and the like)."""
