"""S3 movie transfers shared by both sides: the agent (follow, archive, restore) and the operator's CLI
(`scipioncloud data push/pull`) import them from here. The library needs boto3 only, never the operator's
package nor the agent's server stack (tests/seams/test_extras.py holds both sides to it)."""
