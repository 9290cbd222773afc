"""Local files in, object storage out.

The gateway reads images from URLs only. A local input file is known by the sha256 of its
bytes (``local``): its items carry ``pixbatch://file/<sha256>`` (``items.file_ref``), so a
key never depends on a URL. Before a run sends anything, the files its pending items name
are uploaded to the bucket of the manifest's ``uploads:`` (``uploads``: content-addressed
objects, conditional writes, recorded in the state file's ``uploads`` table, migration
``m005_object_storage``), and each request gets its URL when it is sent (presigned then,
never stored). ``output_dir: s3://...`` streams outputs into a bucket (``s3out``).
``config`` is the manifest's side (pure), ``s3`` the client (boto3, the optional extra
``pixbatch[s3]``, imported only when a bucket is used), ``phase`` where a run meets them.
"""
