"""forecasters"""
