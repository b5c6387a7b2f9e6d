"""pmpc: private inference of LLMs under real 2-party MPC, and what activation approximations do to safety."""
__version__ = "0.1.0"
