"""SegSweep dashboard: `streamlit run dashboard/Home.py`."""
