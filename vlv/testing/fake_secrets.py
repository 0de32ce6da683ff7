"""Fake credentials for the tests: the session sets them in the environment before Ray starts, so every worker
inherits them, and after the shared tiny run tests/test_secrets.py scans MLflow, the store, the artifacts and the
logs for these exact strings. None of them is a real key.
"""

FAKE_SECRETS = {
    "GEMINI_API_KEY": "fake-gemini-AIzaSyD3adb33fCaf3-0123456789abcdef",
    "GOOGLE_API_KEY": "fake-google-AIzaSyC0ffeeC0ffee-fedcba9876543210",
    "AWS_ACCESS_KEY_ID": "AKIAFAKE7EXAMPLE0KEY",
    "AWS_SECRET_ACCESS_KEY": "fake/aws+Secret0Key1Never2Logged3Anywhere4",
    "HF_TOKEN": "hf_fakeTokenNeverLoggedAnywhere0123456789",
}
