"""AWS wire mechanics for the Bedrock dialect: SigV4 and event stream framing.

Both modules are I/O-free and stdlib-only:

- `engine.aws.sigv4`: sign outbound requests to AWS, verify inbound ones.
- `engine.aws.eventstream`: ``application/vnd.amazon.eventstream`` codec.
"""
