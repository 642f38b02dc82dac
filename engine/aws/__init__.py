"""AWS wire mechanics for the Bedrock dialect: SigV4 and event stream framing.

Both modules are I/O-free and stdlib-only:

- `busbar.aws.sigv4`: sign outbound requests to AWS, verify inbound ones.
- `busbar.aws.eventstream`: ``application/vnd.amazon.eventstream`` codec.
"""
