"""localdev"""
