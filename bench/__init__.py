"""Benchmarks: celery-graph side by side with Celery's canvas and dramatiq-workflow.

Run:
    make bench          # full run, 3 repeats, N up to 10,000
    make bench-quick    # a few minutes
"""
