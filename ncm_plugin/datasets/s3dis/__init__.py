"""S3DIS: RobustS3DIS (loader.py), raw rooms -> pkl cache (convert.py) and
synthetic rooms in the raw layout (synthetic.py)."""
